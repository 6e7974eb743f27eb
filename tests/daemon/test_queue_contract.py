"""One set of behaviour tests for the daemon's `JobQueue` port, run against the real queue
(`SqlJobQueue` on a real SQLite file) and the in-memory double the daemon tests use: what the
daemon tests learn from the double holds for the real thing. Only the port's methods are used
to observe (plus each implementation's own row for the one thing the port does not say)."""

from __future__ import annotations

import pytest

from defectwatch.db import open_database
from defectwatch.db.queue import SqlJobQueue, mark_done
from tests.daemon.queue_double import InMemoryJobQueue
from tests.db.factories import Clock, sha


class Real:
    """SqlJobQueue with its clock; ``done(job)`` as the service's process marks it."""

    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.engine = open_database(f"sqlite:///{tmp_path / 'record.db'}")
        self.queue = SqlJobQueue(self.engine, clock=self.clock)

    def done(self, job) -> bool:
        from defectwatch.db import write_transaction

        with write_transaction(self.engine) as s:
            return mark_done(job, session=s)

    def error(self, job) -> str | None:
        from defectwatch.db import read_transaction
        from defectwatch.db.models import ScanRow

        with read_transaction(self.engine) as s:
            return s.get(ScanRow, job.id).last_error

    def close(self) -> None:
        self.engine.dispose()


class Double:
    """InMemoryJobQueue on the same kind of settable clock (seconds)."""

    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.queue = InMemoryJobQueue(clock=lambda: self.clock().timestamp())

    def done(self, job) -> bool:
        return self.queue.mark_done(job, "done")

    def error(self, job) -> str | None:
        return self.queue.rows[job.id].last_error

    def close(self) -> None:
        pass


@pytest.fixture(params=[Real, Double], ids=["sql", "double"])
def impl(request, tmp_path):
    made = request.param(tmp_path)
    yield made
    made.close()


def put(
    queue, path: str, *, content: str | None = None, size: int = 100, mtime_ns: int = 1
) -> bool:
    return queue.enqueue(path, sha256=sha(content or path), size_bytes=size, mtime_ns=mtime_ns)


def test_enqueue_is_idempotent_by_content(impl):
    q = impl.queue
    assert put(q, "/w/S1/a.sxm") is True
    assert put(q, "/w/S1/a.sxm") is False  # re-delivered
    assert put(q, "/w/S2/copy of a.sxm", content="/w/S1/a.sxm") is False  # re-copied
    assert put(q, "/w/S1/a.sxm", content="rewritten", mtime_ns=2) is True  # new content
    assert q.depth() == 2


def test_is_known_matches_path_size_and_mtime(impl):
    q = impl.queue
    put(q, "/w/S1/a.sxm", size=100, mtime_ns=7)
    assert q.is_known("/w/S1/a.sxm", size_bytes=100, mtime_ns=7)
    assert not q.is_known("/w/S1/a.sxm", size_bytes=101, mtime_ns=7)
    assert not q.is_known("/w/S1/a.sxm", size_bytes=100, mtime_ns=8)
    assert not q.is_known("/w/S1/b.sxm", size_bytes=100, mtime_ns=7)


def test_claim_leases_the_oldest_job_once(impl):
    q = impl.queue
    put(q, "/w/S1/a.sxm")
    put(q, "/w/S2/b.sxm")
    first = q.claim(worker="w1", lease_s=60)
    second = q.claim(worker="w2", lease_s=60)
    assert (first.path, first.attempts) == ("/w/S1/a.sxm", 1)
    assert second.path == "/w/S2/b.sxm"
    assert q.claim(worker="w3", lease_s=60) is None  # both leased
    assert q.depth() == 2  # processing still counts


def test_an_expired_lease_is_claimable_and_requeued(impl):
    q = impl.queue
    put(q, "/w/S1/a.sxm")
    job = q.claim(worker="w1", lease_s=30)
    impl.clock.advance(30)  # exactly at the end of the lease: still held
    assert q.claim(worker="w2", lease_s=30) is None
    assert q.requeue_expired() == 0
    impl.clock.advance(1)  # w1 was killed: its lease ran out
    assert q.requeue_expired() == 1
    assert q.requeue_expired() == 0
    again = q.claim(worker="w2", lease_s=30)
    assert again.id == job.id and again.attempts == 2


def test_retry_backs_off_then_fails_after_max_attempts(impl):
    q = impl.queue
    put(q, "/w/S1/a.sxm")
    for attempt in (1, 2):
        job = q.claim(worker="w", lease_s=60)
        assert job.attempts == attempt
        assert q.retry(job, reason="still being written", delay_s=10, max_attempts=3)
        assert q.claim(worker="w", lease_s=60) is None  # backing off
        assert q.depth() == 1
        impl.clock.advance(10)
    job = q.claim(worker="w", lease_s=60)
    assert job.attempts == 3
    assert q.retry(job, reason="still being written", delay_s=10, max_attempts=3) is False
    impl.clock.advance(3600)
    assert q.claim(worker="w", lease_s=60) is None
    assert q.depth() == 0
    assert impl.error(job) == "still being written (gave up after 3 attempts)"


def test_fail_is_for_good(impl):
    q = impl.queue
    put(q, "/w/S1/bad.sxm")
    job = q.claim(worker="w", lease_s=60)
    q.fail(job, reason="bad.sxm: not a Nanonis file")
    assert impl.error(job) == "bad.sxm: not a Nanonis file"
    impl.clock.advance(3600)
    assert q.claim(worker="w", lease_s=60) is None and q.depth() == 0
    assert q.requeue_expired() == 0


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_holder(impl):
    q = impl.queue
    put(q, "/w/S1/a.sxm")
    stale = q.claim(worker="slow", lease_s=5)
    impl.clock.advance(6)
    fresh = q.claim(worker="fast", lease_s=60)
    assert fresh.id == stale.id and fresh.attempts == 2
    # the slow worker finishes late: nothing it does sticks
    assert q.retry(stale, reason="late", delay_s=1, max_attempts=5) is False
    q.fail(stale, reason="late")
    assert impl.done(stale) is False
    assert q.depth() == 1 and q.claim(worker="other", lease_s=60) is None  # fresh holds it
    assert impl.done(fresh) is True
    assert q.depth() == 0
