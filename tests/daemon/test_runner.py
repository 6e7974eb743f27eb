"""`run_daemon` on a real temporary folder: watchdog events, readiness, the worker, stops.

The queue is the in-memory double; `process` really reads each scan, so incomplete and corrupt
files raise the reader's own errors.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from defectwatch.daemon.runner import DaemonReport, run_daemon
from defectwatch.daemon.signals import StopSignals
from defectwatch.daemon.worker import RetryPolicy
from defectwatch.errors import ConfigError
from tests.daemon.queue_double import (
    InMemoryJobQueue,
    ReadingProcess,
    sxm_bytes,
    sxm_expected_size,
    write_scan,
)

FAST = dict(
    stable_for_s=0.2,
    incomplete_after_s=1.0,
    tick_s=0.05,
    idle_s=0.05,
    retry=RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2),
)


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {cond}")
        time.sleep(0.02)


class Daemon:
    """run_daemon in a background thread; ``report`` once it has stopped."""

    def __init__(self, dirs: list[Path], queue: InMemoryJobQueue, process, **kw) -> None:
        self.stop = threading.Event()
        self.report: DaemonReport | None = None
        self.error: BaseException | None = None
        opts = {**FAST, **kw}

        def main() -> None:
            try:
                self.report = run_daemon(
                    dirs,
                    queue=queue,
                    process=process,
                    expected_size=sxm_expected_size,
                    stop_event=self.stop,
                    **opts,
                )
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                self.error = exc

        self.thread = threading.Thread(target=main, name="daemon-under-test")

    def started(self, queue: InMemoryJobQueue) -> None:
        wait_until(lambda: queue.calls.get("requeue_expired", 0) > 0 or self.error is not None)
        time.sleep(0.1)  # the observer is up before reconcile; let it settle

    def finish(self, timeout_s: float = 10.0) -> DaemonReport:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the daemon did not stop"
        if self.error:
            raise self.error
        assert self.report is not None
        return self.report


@contextmanager
def daemon(dirs: list[Path], queue: InMemoryJobQueue, process, **kw) -> Iterator[Daemon]:
    d = Daemon(dirs, queue, process, **kw)
    d.thread.start()
    try:
        d.started(queue)
        yield d
    finally:
        if d.thread.is_alive():
            d.stop.set()
            d.thread.join(10)


def statuses(queue: InMemoryJobQueue) -> dict[str, str]:
    return {name: r.status for name, r in queue.by_name().items()}


def test_a_scan_written_in_chunks_is_processed_once_when_complete(tmp_path):
    q = InMemoryJobQueue()
    proc = ReadingProcess(q)
    data = sxm_bytes(1)
    with daemon([tmp_path], q, proc) as d:
        with open(tmp_path / "slow.sxm", "wb") as fh:
            for k in range(8):  # ~1.2 s of writing, with pauses longer than stable_for_s
                fh.write(data[k * len(data) // 8 : (k + 1) * len(data) // 8])
                fh.flush()
                time.sleep(0.15 if k != 4 else 0.5)
        wait_until(lambda: statuses(q) == {"slow.sxm": "done"})
        time.sleep(0.3)
        report = d.finish()
    assert proc.seen == [str(tmp_path / "slow.sxm")]
    assert q.calls["enqueue"] == 1 and q.rows[1].attempts == 1
    assert report.done == 1 and report.failed == 0


def test_truncated_file_is_retried_then_failed_with_its_reason(tmp_path):
    q = InMemoryJobQueue()
    data = sxm_bytes(2)
    with daemon([tmp_path], q, ReadingProcess(q)) as d:
        (tmp_path / "cut.sxm").write_bytes(data[: len(data) * 2 // 3])
        wait_until(lambda: statuses(q) == {"cut.sxm": "failed"})
        d.finish()
    row = q.by_name()["cut.sxm"]
    assert row.attempts == 3 and q.calls["retry"] == 3
    assert "header promises" in row.last_error and "still being written?" in row.last_error


def test_garbage_fails_at_once_and_other_files_are_ignored(tmp_path):
    q = InMemoryJobQueue()
    with daemon([tmp_path], q, ReadingProcess(q)) as d:
        (tmp_path / "garbage.sxm").write_bytes(os.urandom(20_000))
        (tmp_path / "text.sxm").write_text("not a scan at all\n" * 100)
        (tmp_path / "notes.txt").write_bytes(sxm_bytes(3))
        (tmp_path / "scan.dat").write_bytes(sxm_bytes(4))
        write_scan(tmp_path / "UPPER.SXM", 5)
        wait_until(
            lambda: len(q.rows) == 3 and all(s in ("failed", "done") for s in statuses(q).values())
        )
        d.finish()
    rows = q.by_name()
    assert statuses(q) == {"garbage.sxm": "failed", "text.sxm": "failed", "UPPER.SXM": "done"}
    assert (
        rows["garbage.sxm"].attempts == 1
        and "not a Nanonis .sxm file" in rows["garbage.sxm"].last_error
    )
    assert q.calls.get("retry", 0) == 0


def test_hidden_and_temporary_files_are_ignored(tmp_path):
    q = InMemoryJobQueue()
    with daemon([tmp_path], q, ReadingProcess(q), recursive=True) as d:
        for name in [
            ".hidden.sxm",
            "~lock.sxm",
            "scan.sxm.part",
            "scan.sxm.tmp",
            "scan.sxm.crdownload",
            "scan.sxm~",
            ".trash/inside.sxm",
        ]:
            write_scan(tmp_path / name, 6)
        write_scan(tmp_path / "real.sxm", 7)
        wait_until(lambda: statuses(q) == {"real.sxm": "done"})
        time.sleep(0.5)
        d.finish()
    assert statuses(q) == {"real.sxm": "done"}


def test_moved_in_files_and_folders(tmp_path):
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    q = InMemoryJobQueue()
    with daemon([watched], q, ReadingProcess(q), recursive=True) as d:
        write_scan(outside / "a.sxm", 8)
        os.rename(outside / "a.sxm", watched / "a.sxm")
        write_scan(watched / "b.sxm.part", 9)  # a copy tool's temporary name, then renamed
        os.rename(watched / "b.sxm.part", watched / "b.sxm")
        write_scan(outside / "Sample 2" / "c.sxm", 10)
        os.rename(outside / "Sample 2", watched / "Sample 2")
        wait_until(lambda: statuses(q) == {"a.sxm": "done", "b.sxm": "done", "c.sxm": "done"})
        d.finish()
    assert q.by_name()["c.sxm"].path == str(watched / "Sample 2" / "c.sxm")


def test_polling_observer_and_non_ascii_paths(tmp_path):
    folder = tmp_path / "Probe 1 – Ångström"
    folder.mkdir()
    q = InMemoryJobQueue()
    with daemon([folder], q, ReadingProcess(q), poll_s=0.1, recursive=True) as d:
        write_scan(folder / "WSe2 ü" / "scan 001.sxm", 11)
        wait_until(lambda: statuses(q) == {"scan 001.sxm": "done"})
        d.finish()


def test_recursive_off_ignores_subfolders(tmp_path):
    q = InMemoryJobQueue()
    (tmp_path / "sub").mkdir()
    with daemon([tmp_path], q, ReadingProcess(q)) as d:
        write_scan(tmp_path / "sub" / "deep.sxm", 12)
        write_scan(tmp_path / "top.sxm", 13)
        wait_until(lambda: statuses(q) == {"top.sxm": "done"})
        time.sleep(0.4)
        d.finish()
    assert statuses(q) == {"top.sxm": "done"}


def test_warm_stop_finishes_the_scan_under_way(tmp_path):
    # left alone for an hour, so start-up queues all three at once; fresh files would become
    # ready one tick apart and the stop could come before the later two were queued at all
    an_hour_ago = time.time() - 3600
    for k in range(3):
        made = write_scan(tmp_path / f"s{k}.sxm", 20 + k)
        os.utime(made, (an_hour_ago, an_hour_ago))
    q = InMemoryJobQueue()
    proc = ReadingProcess(q, delay_s=0.6)
    with daemon([tmp_path], q, proc) as d:
        assert proc.started.wait(5)
        d.stop.set()  # as the first SIGTERM does
        report = d.finish()
    assert report.startup.queued == 3
    assert report.done == 1 and proc.finished.is_set()
    assert sorted(statuses(q).values()) == ["done", "queued", "queued"]


def test_reconcile_queues_scans_made_while_down_and_requeues_expired_leases(tmp_path):
    q = InMemoryJobQueue()
    old = write_scan(tmp_path / "old.sxm", 30)
    st = old.stat()
    q.enqueue(str(old), sha256="abc", size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    q.claim(worker="dead:1", lease_s=0.0)  # a daemon killed while processing it
    an_hour_ago = time.time() - 3600
    for k in range(3):
        made = write_scan(tmp_path / f"while-down-{k}.sxm", 31 + k)
        os.utime(made, (an_hour_ago, an_hour_ago))
    report = run_daemon(
        [tmp_path],
        queue=q,
        process=ReadingProcess(q),
        expected_size=sxm_expected_size,
        once=True,
        **FAST,
    )
    assert report.startup.requeued == 1 and report.startup.known == 1
    assert report.startup.queued == 3
    assert set(statuses(q).values()) == {"done"} and len(q.rows) == 4
    assert q.rows[1].attempts == 2  # the killed run counted


def test_once_also_takes_files_that_become_ready_while_it_runs(tmp_path):
    write_scan(tmp_path / "first.sxm", 40)
    q = InMemoryJobQueue()
    data = sxm_bytes(41)

    def late_writer() -> None:
        with open(tmp_path / "late.sxm", "wb") as fh:
            fh.write(data[:1000])
            fh.flush()
            time.sleep(0.4)
            fh.write(data[1000:])

    t = threading.Thread(target=late_writer)
    t.start()
    report = run_daemon(
        [tmp_path],
        queue=q,
        process=ReadingProcess(q),
        expected_size=sxm_expected_size,
        once=True,
        **FAST,
    )
    t.join()
    assert report.done == 2 and statuses(q) == {"first.sxm": "done", "late.sxm": "done"}


def test_a_heartbeat_is_called_and_its_failures_do_not_matter(tmp_path):
    q = InMemoryJobQueue()
    beats = []

    def heartbeat(status) -> None:
        beats.append(status)
        if len(beats) == 2:
            raise OSError("database is locked")

    with daemon([tmp_path], q, ReadingProcess(q), heartbeat=heartbeat, heartbeat_s=0.05) as d:
        write_scan(tmp_path / "a.sxm", 50)
        wait_until(lambda: statuses(q) == {"a.sxm": "done"})
        wait_until(lambda: len(beats) >= 4 and beats[-1].done == 1)
        d.finish()
    assert beats[0].worker == beats[-1].worker and ":" in beats[0].worker


def test_two_daemons_on_one_folder_do_not_process_a_scan_twice(tmp_path):
    q = InMemoryJobQueue()
    p1, p2 = ReadingProcess(q, delay_s=0.05), ReadingProcess(q, delay_s=0.05)
    with (
        daemon([tmp_path], q, p1, worker_name="one:1") as d1,
        daemon([tmp_path], q, p2, worker_name="two:2") as d2,
    ):
        for k in range(6):
            write_scan(tmp_path / f"s{k}.sxm", 60 + k)
        wait_until(lambda: len(q.rows) == 6 and set(statuses(q).values()) == {"done"})
        d1.finish()
        d2.finish()
    assert sorted(p1.seen + p2.seen) == sorted(r.path for r in q.rows.values())


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        run_daemon(
            [tmp_path / "nope"],
            queue=InMemoryJobQueue(),
            process=lambda j: "",
            expected_size=sxm_expected_size,
            once=True,
        )


def test_signals_first_warm_then_cold():
    stop = threading.Event()
    exits: list[int] = []
    with StopSignals(stop, cold_exit=exits.append) as s:
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: stop.is_set(), 2)
        assert exits == []
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: exits == [128 + signal.SIGINT], 2)
    assert s.received == 2
    assert signal.getsignal(signal.SIGINT) is not s._handle


def test_a_rescan_finds_what_the_observer_missed(tmp_path):
    q = InMemoryJobQueue()
    # a polling observer that never polls again after its first snapshot stands in for an
    # inotify queue overflow: only the periodic rescan can find the new file
    with daemon([tmp_path], q, ReadingProcess(q), poll_s=1000.0, rescan_s=0.3) as d:
        write_scan(tmp_path / "missed.sxm", 70)
        wait_until(lambda: statuses(q) == {"missed.sxm": "done"})
        d.finish()


def test_a_deleted_file_is_forgotten_and_a_rewritten_one_is_a_new_scan(tmp_path):
    q = InMemoryJobQueue()
    data = sxm_bytes(80)
    with daemon([tmp_path], q, ReadingProcess(q)) as d:
        (tmp_path / "gone.sxm").write_bytes(data[:2000])
        time.sleep(0.2)
        (tmp_path / "gone.sxm").unlink()
        write_scan(tmp_path / "same.sxm", 81)
        wait_until(lambda: statuses(q) == {"same.sxm": "done"})
        write_scan(tmp_path / "same.sxm", 82)  # new content under the same name
        wait_until(lambda: len(q.rows) == 2 and set(statuses(q).values()) == {"done"})
        report = d.finish()
    assert report.pending_files == 0 and report.done == 2
