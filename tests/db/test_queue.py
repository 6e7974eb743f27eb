"""The job queue's semantics in one process (concurrency: test_concurrency.py)."""

from __future__ import annotations

import inspect as pyinspect

import pytest

from defectwatch.daemon.ports import JobQueue
from defectwatch.db import read_transaction, write_transaction
from defectwatch.db.models import ScanRow
from defectwatch.db.queue import SqlJobQueue, mark_done
from defectwatch.db.records import add_detection_run
from tests.db.factories import detection, sha

ON_POSTGRESQL = True  # each test once more on a real PostgreSQL server (conftest.py)


@pytest.fixture
def queue(engine, clock):
    return SqlJobQueue(engine, sample_for=lambda path: path.split("/")[2], clock=clock)


def put(
    queue: SqlJobQueue, path: str, *, content: str | None = None, size: int = 100, mtime_ns: int = 1
) -> bool:
    return queue.enqueue(path, sha256=sha(content or path), size_bytes=size, mtime_ns=mtime_ns)


def test_implements_the_daemon_port_by_shape():
    for name, member in pyinspect.getmembers(JobQueue, pyinspect.isfunction):
        if name.startswith("_"):
            continue
        mine = getattr(SqlJobQueue, name)
        assert (
            pyinspect.signature(mine).parameters.keys()
            == pyinspect.signature(member).parameters.keys()
        ), name


def test_enqueue_is_idempotent_by_content(queue):
    assert put(queue, "/w/S1/a.sxm") is True
    assert put(queue, "/w/S1/a.sxm") is False  # re-delivered
    assert put(queue, "/w/S2/copy of a.sxm", content="/w/S1/a.sxm") is False  # re-copied
    assert put(queue, "/w/S1/a.sxm", content="rewritten", mtime_ns=2) is True  # new content
    assert queue.depth() == 2


def test_is_known_matches_path_size_and_mtime(queue):
    put(queue, "/w/S1/a.sxm", size=100, mtime_ns=7)
    assert queue.is_known("/w/S1/a.sxm", size_bytes=100, mtime_ns=7)
    assert not queue.is_known("/w/S1/a.sxm", size_bytes=101, mtime_ns=7)
    assert not queue.is_known("/w/S1/a.sxm", size_bytes=100, mtime_ns=8)
    assert not queue.is_known("/w/S1/b.sxm", size_bytes=100, mtime_ns=7)


def test_claim_leases_the_oldest_job_with_its_sample(queue):
    put(queue, "/w/S1/a.sxm")
    put(queue, "/w/S2/b.sxm")
    first = queue.claim(worker="w1", lease_s=60)
    second = queue.claim(worker="w2", lease_s=60)
    assert (first.path, first.sample, first.attempts) == ("/w/S1/a.sxm", "S1", 1)
    assert (second.path, second.sample) == ("/w/S2/b.sxm", "S2")
    assert queue.claim(worker="w3", lease_s=60) is None  # both leased
    assert queue.depth() == 2


def test_expired_lease_is_claimable_and_requeued(queue, clock, engine):
    put(queue, "/w/S1/a.sxm")
    job = queue.claim(worker="w1", lease_s=30)
    clock.advance(29)
    assert queue.claim(worker="w2", lease_s=30) is None
    assert queue.requeue_expired() == 0
    clock.advance(2)  # w1 was killed: its lease ran out
    assert queue.requeue_expired() == 1
    with read_transaction(engine) as s:
        row = s.get(ScanRow, job.id)
        assert (row.status, row.lease_owner) == ("queued", None)
    again = queue.claim(worker="w2", lease_s=30)
    assert again.id == job.id and again.attempts == 2


def test_retry_backs_off_then_fails_after_max_attempts(queue, clock, engine):
    put(queue, "/w/S1/a.sxm")
    for attempt in (1, 2):
        job = queue.claim(worker="w", lease_s=60)
        assert job.attempts == attempt
        assert queue.retry(job, reason="still being written", delay_s=10, max_attempts=3)
        assert queue.claim(worker="w", lease_s=60) is None  # backing off
        clock.advance(10)
    job = queue.claim(worker="w", lease_s=60)
    assert job.attempts == 3
    assert queue.retry(job, reason="still being written", delay_s=10, max_attempts=3) is False
    clock.advance(3600)
    assert queue.claim(worker="w", lease_s=60) is None
    assert queue.depth() == 0
    with read_transaction(engine) as s:
        row = s.get(ScanRow, job.id)
        assert row.status == "failed"
        assert row.last_error.startswith("still being written") and "3 attempts" in row.last_error


def test_fail_records_the_reason(queue, engine):
    put(queue, "/w/S1/bad.sxm")
    job = queue.claim(worker="w", lease_s=60)
    queue.fail(job, reason="bad.sxm: not a Nanonis file")
    with read_transaction(engine) as s:
        row = s.get(ScanRow, job.id)
        assert (row.status, row.last_error) == ("failed", "bad.sxm: not a Nanonis file")
    assert queue.claim(worker="w", lease_s=60) is None


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_holder(queue, clock, engine):
    put(queue, "/w/S1/a.sxm")
    stale = queue.claim(worker="slow", lease_s=5)
    clock.advance(6)
    fresh = queue.claim(worker="fast", lease_s=60)
    assert fresh.id == stale.id
    # the slow worker finishes late: nothing it does sticks
    assert queue.retry(stale, reason="late", delay_s=1, max_attempts=5) is False
    queue.fail(stale, reason="late")
    with write_transaction(engine) as s:
        assert mark_done(stale, session=s) is False
    with write_transaction(engine) as s:
        assert mark_done(fresh, session=s) is True
        add_detection_run(fresh.id, detection(1, 0, 100.0), session=s)
    with read_transaction(engine) as s:
        row = s.get(ScanRow, fresh.id)
        assert (row.status, row.last_error, row.lease_owner) == ("done", None, None)


def test_unresolved_sample_is_stored_as_none(engine):
    q = SqlJobQueue(engine)
    q.enqueue("/x.sxm", sha256=sha("x"), size_bytes=1, mtime_ns=1)
    assert q.claim(worker="w", lease_s=1).sample is None


def test_jobs_of_dead_local_workers_are_released_at_once(queue):
    put(queue, "/w/S1/a.sxm")
    put(queue, "/w/S1/b.sxm")
    put(queue, "/w/S1/c.sxm")
    queue.claim(worker="lab-pc:111", lease_s=900)  # killed with kill -9
    queue.claim(worker="lab-pc:222", lease_s=900)  # still running
    queue.claim(worker="other-pc:111", lease_s=900)  # another machine: left to its lease
    released = queue.release_dead_workers(host="lab-pc", is_alive=lambda pid: pid == 222)
    assert released == 1
    job = queue.claim(worker="lab-pc:333", lease_s=60)
    assert job is not None and job.path == "/w/S1/a.sxm" and job.attempts == 2
    assert queue.claim(worker="lab-pc:333", lease_s=60) is None
