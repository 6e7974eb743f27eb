"""`run_daemon`: watch folders, reconcile at start-up, and work the queue until told to stop.

Threads: watchdog's observer nominates files; the calling thread ticks (readiness checks,
enqueueing, heartbeat, periodic rescans); one worker thread claims and processes jobs. With
``once=True`` everything runs in the calling thread and returns when nothing has happened for
``settle_s``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from defectwatch.daemon.ports import ExpectedSize, JobQueue, Process
from defectwatch.daemon.readiness import Readiness
from defectwatch.daemon.reconcile import ReconcileReport, nominate_unknown, reconcile
from defectwatch.daemon.watcher import FolderWatcher
from defectwatch.daemon.worker import RetryPolicy, Worker, WorkerStats
from defectwatch.errors import ConfigError, DatabaseUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonStatus:
    """What a heartbeat reports: who, since when (UTC), and how the work goes."""

    worker: str
    started_at: datetime
    pending_files: int
    current: str | None
    done: int
    failed: int
    retried: int


Heartbeat = Callable[[DaemonStatus], None]


@dataclass(frozen=True)
class DaemonReport:
    """How a run ended: start-up findings, worker counters, files still being waited for."""

    startup: ReconcileReport
    done: int
    failed: int
    retried: int
    pending_files: int
    seconds: float


def check_dirs(dirs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Absolute paths of the watch folders; ConfigError naming one that is not a folder."""
    if not dirs:
        raise ConfigError("no folder to watch: give at least one DIR")
    roots: list[str] = []
    for d in dirs:
        path = os.path.abspath(os.fspath(d))
        if not os.path.isdir(path):
            raise ConfigError(f"{d}: not a folder (create it, or check the path)")
        if path not in roots:
            roots.append(path)
    return roots


def run_daemon(
    dirs: Sequence[str | Path],
    *,
    queue: JobQueue,
    process: Process,
    expected_size: ExpectedSize,
    recursive: bool = False,
    poll_s: float | None = None,
    pattern: str = "*.sxm",
    stable_for_s: float = 2.0,
    incomplete_after_s: float = 60.0,
    once: bool = False,
    settle_s: float | None = None,
    stop_event: threading.Event | None = None,
    heartbeat: Heartbeat | None = None,
    heartbeat_s: float = 5.0,
    tick_s: float = 0.25,
    lease_s: float = 900.0,
    retry: RetryPolicy | None = None,
    idle_s: float = 1.0,
    rescan_s: float | None = 600.0,
    worker_name: str | None = None,
) -> DaemonReport:
    """Watch ``dirs`` and process their scans until ``stop_event`` is set (or, with ``once``,
    until everything there is done and nothing changed for ``settle_s``).

    ``poll_s``: use watchdog's polling observer with this interval (s) instead of the native
    one. ``stable_for_s``: how long a complete file's size and mtime must not change.
    ``incomplete_after_s``: how long a file may stay shorter than its header promises before it
    is queued anyway (to be retried, then failed). ``lease_s``: how long a claimed job is ours.
    ``rescan_s``: walk the folders again this often, for events an observer missed (None: never).
    Signals are the caller's: `signals.StopSignals` sets ``stop_event`` (``watch`` installs
    it before the model loads). Returns a `DaemonReport`.
    """
    roots = check_dirs(dirs)
    stop = stop_event or threading.Event()
    started = time.monotonic()
    readiness = Readiness(
        expected_size,
        stable_for_s=stable_for_s,
        incomplete_after_s=max(incomplete_after_s, stable_for_s),
        skip=lambda path, size, mtime: queue.is_known(path, size_bytes=size, mtime_ns=mtime),
    )
    worker = Worker(queue, process, name=worker_name, lease_s=lease_s, retry=retry, idle_s=idle_s)
    beat = _Beat(heartbeat, heartbeat_s, worker, readiness)
    watcher = FolderWatcher(roots, readiness, pattern=pattern, recursive=recursive, poll_s=poll_s)
    watcher.start()  # before the walk, so nothing written during it is missed
    try:
        startup = reconcile(
            roots, queue=queue, readiness=readiness, pattern=pattern, recursive=recursive
        )
        beat(force=True)
        if once:
            _run_once(
                stop,
                queue,
                readiness,
                worker,
                beat,
                tick_s=tick_s,
                settle_s=settle_s
                if settle_s is not None
                else max(1.0, 2 * stable_for_s + 2 * tick_s),
            )
        else:
            rescan = _Rescan(roots, queue, readiness, pattern, recursive, rescan_s)
            _run_forever(stop, queue, readiness, worker, beat, rescan, tick_s=tick_s)
    finally:
        watcher.stop()
    stats = worker.stats
    report = DaemonReport(
        startup,
        stats.done,
        stats.failed,
        stats.retried,
        len(readiness.pending()),
        time.monotonic() - started,
    )
    waiting = _depth(queue)
    log.info(
        "stopped: %d scan(s) done, %d failed, %d retried; %s job(s) in the queue, %d "
        "file(s) not ready",
        report.done,
        report.failed,
        report.retried,
        "?" if waiting is None else waiting,
        report.pending_files,
    )
    return report


def _depth(queue: JobQueue) -> int | None:
    try:
        return queue.depth()
    except Exception:  # noqa: BLE001 - only for the closing log line
        return None


class _Beat:
    """Calls the heartbeat every ``every_s`` seconds; its failures are logged, not raised."""

    def __init__(
        self, heartbeat: Heartbeat | None, every_s: float, worker: Worker, readiness: Readiness
    ) -> None:
        self.heartbeat = heartbeat
        self.every_s = every_s
        self.worker = worker
        self.readiness = readiness
        self.started_at = datetime.now(UTC)
        self.last = float("-inf")

    def status(self) -> DaemonStatus:
        s: WorkerStats = self.worker.stats
        return DaemonStatus(
            self.worker.name,
            self.started_at,
            len(self.readiness.pending()),
            s.current,
            s.done,
            s.failed,
            s.retried,
        )

    def __call__(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.heartbeat is None or (not force and now - self.last < self.every_s):
            return
        self.last = now
        try:
            self.heartbeat(self.status())
        except DatabaseUnavailableError as exc:  # the worker reports the outage
            log.debug("heartbeat failed: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a missed beat is not worth stopping for
            log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)


class _Rescan:
    """Walks the folders again every ``every_s`` seconds (inotify can overflow and drop
    events; network shares can come back)."""

    def __init__(
        self,
        roots: list[str],
        queue: JobQueue,
        readiness: Readiness,
        pattern: str,
        recursive: bool,
        every_s: float | None,
    ) -> None:
        self.roots, self.queue, self.readiness = roots, queue, readiness
        self.pattern, self.recursive, self.every_s = pattern, recursive, every_s
        self.next = time.monotonic() + every_s if every_s else float("inf")

    def __call__(self) -> None:
        if time.monotonic() < self.next or self.every_s is None:
            return
        self.next = time.monotonic() + self.every_s
        try:
            _, nominated = nominate_unknown(
                self.roots,
                queue=self.queue,
                readiness=self.readiness,
                pattern=self.pattern,
                recursive=self.recursive,
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("rescan failed: %s: %s", type(exc).__name__, exc)
            return
        if nominated:
            log.info("rescan: %d file(s) the watcher had not reported", nominated)


def _run_once(
    stop: threading.Event,
    queue: JobQueue,
    readiness: Readiness,
    worker: Worker,
    beat: _Beat,
    *,
    tick_s: float,
    settle_s: float,
) -> None:
    """Single-threaded: process what is there, and what becomes ready while things still
    change; return after ``settle_s`` without news (or when ``stop`` is set)."""
    last_news = time.monotonic()
    while not stop.is_set():
        news = readiness.hand_over(queue) > 0
        news |= worker.run_once()
        beat()
        now = time.monotonic()
        if news:
            last_news = now
            continue
        if now - max(last_news, readiness.last_change) >= settle_s:
            break
        stop.wait(tick_s)


def _run_forever(
    stop: threading.Event,
    queue: JobQueue,
    readiness: Readiness,
    worker: Worker,
    beat: _Beat,
    rescan: _Rescan,
    *,
    tick_s: float,
) -> None:
    """The calling thread ticks; a worker thread processes. Returns once ``stop`` is set and
    the scan under way (if any) is finished."""
    wake = threading.Event()

    def start_worker() -> threading.Thread:
        t = threading.Thread(
            target=worker.run, args=(stop, wake), name="defectwatch-worker", daemon=True
        )
        t.start()
        return t

    thread = start_worker()
    try:
        while not stop.is_set():
            if readiness.hand_over(queue):
                wake.set()
            beat()
            rescan()
            if not thread.is_alive():  # cannot happen unless the worker itself has a bug
                log.error("the worker thread died; starting a new one")
                thread = start_worker()
            stop.wait(tick_s)
    finally:
        stop.set()
        wake.set()
        if worker.stats.current:
            log.info("finishing %s before stopping", worker.stats.current)
        thread.join()
