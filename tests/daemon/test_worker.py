"""The worker's failure policy and backoff, against the in-memory queue double."""

from __future__ import annotations

import logging
import threading

import pytest

from defectwatch.daemon.worker import RetryPolicy, Worker
from defectwatch.domain import Job
from defectwatch.errors import ModelLoadError, ScanIncompleteError, ScanReadError
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
    assert rows["bad.sxm"].last_error == ("ZeroDivisionError: division by zero "
                                          "(gave up after 2 attempts)")
    assert any(r.exc_info and r.levelno == logging.ERROR for r in caplog.records)
    assert "good.sxm: 3 defects" in caplog.text


def test_a_job_claimed_too_often_is_failed_without_processing():
    q = _queue("poison.sxm")
    q.rows[1].attempts = 5  # the daemon died on it five times already
    called = []
    w = Worker(q, lambda job: called.append(job) or "x", name="t:1",
               retry=RetryPolicy(max_attempts=5))
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
    w = Worker(q, lambda job: "ok" if q.mark_done(job, "ok") else "lost", name="t:1",
               idle_s=0.01)
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
