"""The worker loop: claim one job at a time, process it, and decide what a failure means.

- ``ScanIncompleteError``: the file may still grow: retry with exponential backoff, failed
  after ``max_attempts`` with the reason;
- ``ModelLoadError``: not the file's fault (a broken or missing model version): retried like an
  incomplete file, so the scans wait while someone activates a working version;
- another ``DefectwatchError`` (a corrupt or foreign file...): failed at once with its message;
- anything else is a bug: the traceback is logged and the job retried like an incomplete one;
- ``DatabaseUnavailableError`` (the server is down or restarting), from the queue or from
  ``process``: the worker logs it once, then tries again with exponential backoff
  (``db_retry_base_s`` doubling up to ``db_retry_max_s``); a job whose result could not be
  recorded is held and processed again once the database answers (``process`` records a job
  only while its claim holds, so a scan is never recorded twice).

Nothing a file contains can stop the loop; neither can a database hiccup or outage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from defectwatch.daemon.ports import JobQueue, Process
from defectwatch.domain import Job
from defectwatch.errors import (
    DatabaseUnavailableError,
    DefectwatchError,
    ModelLoadError,
    ScanIncompleteError,
)

log = logging.getLogger(__name__)


def worker_name() -> str:
    """``host:pid``, the name a worker leases jobs under."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retried jobs: ``base_delay_s * 2**(attempts - 1)``, at most ``max_delay_s``;
    failed for good once a job has been claimed ``max_attempts`` times."""

    max_attempts: int = 5
    base_delay_s: float = 10.0
    max_delay_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay_s(self, attempts: int) -> float:
        """Seconds to wait before the next attempt after ``attempts`` claims."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 1))


@dataclass
class WorkerStats:
    """Counters since start: jobs ``done``, ``failed`` for good, ``retried``."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    last_summary: str | None = None
    current: str | None = field(default=None)  # path being processed now
    outages: int = 0  # times the database became unreachable


class Worker:
    """Claims and processes jobs from ``queue`` with ``process`` (see `daemon.ports`)."""

    def __init__(
        self,
        queue: JobQueue,
        process: Process,
        *,
        name: str | None = None,
        lease_s: float = 900.0,
        retry: RetryPolicy | None = None,
        idle_s: float = 1.0,
        db_retry_base_s: float = 1.0,
        db_retry_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.process = process
        self.name = name or worker_name()
        self.lease_s = lease_s
        self.retry = retry or RetryPolicy()
        self.idle_s = idle_s
        self.db_retry_base_s = db_retry_base_s
        self.db_retry_max_s = max(db_retry_max_s, db_retry_base_s)
        self.stats = WorkerStats()
        self._clock = clock
        self._down_since: float | None = None  # monotonic s the database became unreachable
        self._next_try = 0.0  # monotonic s before which the database is not tried again
        self._delay_s = db_retry_base_s
        self._held: Job | None = None  # processed, but its result could not be recorded

    def run_once(self) -> bool:
        """Claim and process at most one job; False when no job was due (or the queue could
        not be reached, or is being waited for after an outage)."""
        if self._down_since is not None and self._clock() < self._next_try:
            return False
        job = self._held
        if job is None:
            try:
                job = self.queue.claim(worker=self.name, lease_s=self.lease_s)
            except DatabaseUnavailableError as exc:
                self._unreachable(exc)
                return False
            except Exception:
                log.exception("could not claim a job; trying again in %.0f s", self.idle_s)
                return False
            if job is None:
                self._reachable()
                return False
        self._held = None
        self.stats.current = job.path
        try:
            self._handle(job)
        except DatabaseUnavailableError as exc:  # recording failed: keep it, try again later
            self._held = job
            self._unreachable(exc)
            return False
        finally:
            self.stats.current = None
        self._reachable()
        return True

    def wait_s(self) -> float:
        """How long to wait before the next ``run_once`` when it found nothing to do."""
        if self._down_since is None:
            return self.idle_s
        return max(0.0, min(self._next_try - self._clock(), self.db_retry_max_s))

    def _unreachable(self, exc: DatabaseUnavailableError) -> None:
        now = self._clock()
        held = f"; {self._held.path} is held until then" if self._held else ""
        if self._down_since is None:
            self._down_since = now
            self._delay_s = self.db_retry_base_s
            self.stats.outages += 1
            log.warning(
                "%s; retrying in %.3g s (backing off up to %.3g s)%s",
                exc,
                self._delay_s,
                self.db_retry_max_s,
                held,
            )
        else:
            self._delay_s = min(2 * self._delay_s, self.db_retry_max_s)
            log.warning(
                "database still unreachable after %.0f s; retrying in %.3g s%s",
                now - self._down_since,
                self._delay_s,
                held,
            )
        self._next_try = now + self._delay_s

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.warning(
                "database reachable again after %.0f s; carrying on",
                self._clock() - self._down_since,
            )
            self._down_since = None
            self._delay_s = self.db_retry_base_s

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Process jobs until ``stop`` is set; a job under way is always finished (warm stop).
        When idle, wait up to ``idle_s`` or until ``wake`` is set."""
        wake = wake or threading.Event()
        while not stop.is_set():
            if self.run_once():
                continue
            wake.wait(self.wait_s())
            wake.clear()

    def _handle(self, job: Job) -> None:
        if job.attempts > self.retry.max_attempts:  # a daemon died on it more than once
            self._fail(
                job,
                f"claimed {job.attempts} times without finishing (the daemon "
                "stopped or crashed while processing it)",
            )
            return
        try:
            summary = self.process(job)
        except DatabaseUnavailableError:
            raise  # nothing recorded: run_once holds the job until the database is back
        except (ScanIncompleteError, ModelLoadError) as exc:
            self._retry(job, str(exc))
        except DefectwatchError as exc:
            self._fail(job, str(exc))
        except Exception as exc:
            log.exception("bug while processing %s (attempt %d)", job.path, job.attempts)
            self._retry(job, f"{type(exc).__name__}: {exc}")
        else:
            self.stats.done += 1
            self.stats.last_summary = summary
            log.info("%s", summary)

    def _retry(self, job: Job, reason: str) -> None:
        delay = self.retry.delay_s(job.attempts)
        try:
            again = self.queue.retry(
                job, reason=reason, delay_s=delay, max_attempts=self.retry.max_attempts
            )
        except DatabaseUnavailableError:
            raise
        except Exception:
            log.exception("%s: could not record the retry; its lease will expire", job.path)
            return
        if again:
            self.stats.retried += 1
            log.warning(
                "%s: %s; retry in %.3g s (attempt %d of %d)",
                job.path,
                reason,
                delay,
                job.attempts,
                self.retry.max_attempts,
            )
        else:
            self.stats.failed += 1
            log.error("%s: failed after %d attempts: %s", job.path, job.attempts, reason)

    def _fail(self, job: Job, reason: str) -> None:
        try:
            self.queue.fail(job, reason=reason)
        except DatabaseUnavailableError:
            raise
        except Exception:
            log.exception("%s: could not record the failure; its lease will expire", job.path)
            return
        self.stats.failed += 1
        log.error("%s: failed: %s", job.path, reason)
