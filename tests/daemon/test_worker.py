"""The worker's failure policy and backoff, against the in-memory queue double."""

from __future__ import annotations

import logging
import threading

import pytest

from defectwatch.daemon.worker import RetryPolicy, Worker
from defectwatch.domain import Job
from defectwatch.errors import (
    DatabaseUnavailableError,
    ModelLoadError,
    ScanIncompleteError,
    ScanReadError,
)
from tests.daemon.queue_double import InMemoryJobQueue


def _queue(*names: str) -> InMemoryJobQueue:
    q = InMemoryJobQueue()
    for k, name in enumerate(names):
        q.enqueue(f"/data/{name}", sha256=f"h{k}", size_bytes=1, mtime_ns=1)
    return q


def test_backoff_doubles_up_to_a_cap():
    p = RetryPolicy(max_attempts=5, base_delay_s=10, max_delay_s=60)
    assert [p.delay_s(a) for a in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_incomplete_is_retried_then_failed_with_its_reason():
    q = _queue("a.sxm")

    def process(job: Job) -> str:
        raise ScanIncompleteError("a.sxm: data is 10 bytes, header promises 20")

    w = Worker(q, process, name="t:1", retry=RetryPolicy(max_attempts=3, base_delay_s=0))
    assert [w.run_once() for _ in range(4)] == [True, True, True, False]
    row = q.by_name()["a.sxm"]
    assert row.status == "failed" and row.attempts == 3
    assert "header promises 20" in row.last_error
    assert (w.stats.retried, w.stats.failed) == (2, 1)


def test_other_defectwatch_errors_fail_at_once():
    q = _queue("a.sxm")

    def process(job: Job) -> str:
        raise ScanReadError("a.sxm: not a Nanonis .sxm file")

    w = Worker(q, process, name="t:1")
    assert w.run_once() and not w.run_once()
    row = q.by_name()["a.sxm"]
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error == "a.sxm: not a Nanonis .sxm file"


def test_a_bug_is_logged_with_its_traceback_and_the_worker_carries_on(caplog):
    q = _queue("bad.sxm", "good.sxm")

    def process(job: Job) -> str:
        if job.path.endswith("bad.sxm"):
            raise ZeroDivisionError("division by zero")
        q.mark_done(job, "good")
        return "good.sxm: 3 defects"

    w = Worker(q, process, name="t:1", retry=RetryPolicy(max_attempts=2, base_delay_s=0))
    with caplog.at_level(logging.INFO, logger="defectwatch.daemon"):
        while w.run_once():
            pass
    rows = q.by_name()
    assert rows["good.sxm"].status == "done"
    assert rows["bad.sxm"].status == "failed"
    # as the real queue words it (the double learnt it from test_queue_contract.py)
    assert rows["bad.sxm"].last_error == (
        "ZeroDivisionError: division by zero (gave up after 2 attempts)"
    )
    assert any(r.exc_info and r.levelno == logging.ERROR for r in caplog.records)
    assert "good.sxm: 3 defects" in caplog.text


def test_a_job_claimed_too_often_is_failed_without_processing():
    q = _queue("poison.sxm")
    q.rows[1].attempts = 5  # the daemon died on it five times already
    called = []
    w = Worker(
        q, lambda job: called.append(job) or "x", name="t:1", retry=RetryPolicy(max_attempts=5)
    )
    assert w.run_once()
    assert called == [] and q.rows[1].status == "failed"
    assert "claimed 6 times" in q.rows[1].last_error


def test_queue_errors_do_not_stop_the_worker(caplog):
    class FlakyQueue(InMemoryJobQueue):
        def __init__(self) -> None:
            super().__init__()
            self.failures = 2

        def claim(self, *, worker: str, lease_s: float) -> Job | None:
            if self.failures:
                self.failures -= 1
                raise OSError("database is locked")
            return super().claim(worker=worker, lease_s=lease_s)

    q = FlakyQueue()
    q.enqueue("/data/a.sxm", sha256="h", size_bytes=1, mtime_ns=1)
    w = Worker(q, lambda job: "ok" if q.mark_done(job, "ok") else "lost", name="t:1", idle_s=0.01)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    for _ in range(200):
        if q.rows[1].status == "done":
            break
        stop.wait(0.01)
    stop.set()
    t.join(5)
    assert q.rows[1].status == "done" and "database is locked" in caplog.text


def test_a_broken_model_is_retried_not_blamed_on_the_file():
    q = _queue("a.sxm")

    def process(job: Job) -> str:
        raise ModelLoadError("models/v3: member_01.safetensors does not match its sha256")

    w = Worker(q, process, name="t:1", retry=RetryPolicy(max_attempts=2, base_delay_s=0))
    w.run_once()
    assert q.rows[1].status == "queued" and "sha256" in q.rows[1].last_error


class _Outage:
    """The queue double behind a database that is down while ``down`` is True."""

    def __init__(self, queue: InMemoryJobQueue) -> None:
        self.queue = queue
        self.down = False

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self.queue, name)

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if self.down:
                raise DatabaseUnavailableError(
                    "database postgresql://h/db is unreachable (connection refused)"
                )
            return method(*args, **kwargs)

        return call


def test_an_unreachable_database_is_waited_out_with_backoff_and_nothing_recorded_twice(caplog):
    q = _queue("a.sxm", "b.sxm")
    db = _Outage(q)
    now = [0.0]
    recorded: list[str] = []

    def process(job: Job) -> str:  # records at the end, as ingest's process does
        if db.down:
            raise DatabaseUnavailableError("database postgresql://h/db is unreachable")
        q.mark_done(job, "ok")
        recorded.append(job.path)
        return "ok"

    w = Worker(
        db, process, name="t:1", db_retry_base_s=1.0, db_retry_max_s=4.0, clock=lambda: now[0]
    )
    assert w.run_once() and recorded == ["/data/a.sxm"]
    db.down = True
    caplog.set_level(logging.WARNING)
    assert not w.run_once()  # claim fails: the outage starts, next try in 1 s
    assert w.wait_s() == 1.0 and not w.run_once()  # not tried again before then
    delays = []
    for _ in range(4):
        now[0] += w.wait_s()
        assert not w.run_once()
        delays.append(w.wait_s())
    assert delays == [2.0, 4.0, 4.0, 4.0]  # doubling up to the cap
    assert w.stats.outages == 1
    text = caplog.text
    assert "is unreachable" in text and "retrying in 1 s" in text and "retrying in 4 s" in text
    assert "Traceback" not in text
    db.down = False
    now[0] += w.wait_s()
    assert w.run_once() and not w.run_once()
    assert recorded == ["/data/a.sxm", "/data/b.sxm"]
    assert "reachable again" in caplog.text and w.wait_s() == w.idle_s


def test_a_result_that_could_not_be_recorded_is_held_and_recorded_once_when_back():
    q = _queue("a.sxm")
    down = [False]
    runs: list[str] = []
    now = [0.0]

    def process(job: Job) -> str:
        runs.append(job.path)
        if down[0]:  # the server went away during the final transaction
            raise DatabaseUnavailableError("database is unreachable")
        q.mark_done(job, "ok")
        return "ok"

    w = Worker(q, process, name="t:1", clock=lambda: now[0])
    down[0] = True
    assert not w.run_once()
    assert q.by_name()["a.sxm"].status == "processing" and q.calls["claim"] == 1
    down[0] = False
    now[0] += w.wait_s()
    assert w.run_once()  # the held job again, without a new claim
    assert q.calls["claim"] == 1 and q.by_name()["a.sxm"].status == "done"
    assert runs == ["/data/a.sxm", "/data/a.sxm"] and w.stats.done == 1
