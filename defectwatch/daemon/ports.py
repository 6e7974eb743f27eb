"""What the daemon is handed: a durable job queue and a ``process(job)`` callable.

The db layer implements ``JobQueue`` (structurally, without importing this module); the service
layer builds ``process`` from the pipeline and the db. The daemon never sees either directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from defectwatch.domain import Job


class JobQueue(Protocol):
    """A durable, leased, at-least-once queue of scan files, idempotent by content hash."""

    def is_known(self, path: str, *, size_bytes: int, mtime_ns: int) -> bool:
        """True when this path with this size and mtime was already enqueued (cheap check
        before hashing a file at start-up)."""

    def enqueue(self, path: str, *, sha256: str, size_bytes: int, mtime_ns: int) -> bool:
        """Record a ready file. False (and nothing new) when a scan with this sha256 exists:
        a re-copied or re-delivered file is never counted twice."""

    def claim(self, *, worker: str, lease_s: float) -> Job | None:
        """Atomically take the oldest due job (queued, or lease expired) and lease it to
        ``worker`` for ``lease_s`` seconds; None when nothing is due."""

    def retry(self, job: Job, *, reason: str, delay_s: float, max_attempts: int) -> bool:
        """Put the job back to run again after ``delay_s``; when ``job.attempts`` has
        reached ``max_attempts`` mark it failed with ``reason`` instead. True if re-queued."""

    def fail(self, job: Job, *, reason: str) -> None:
        """Mark the job failed for good with ``reason``."""

    def requeue_expired(self) -> int:
        """Return jobs whose lease expired (a killed worker) to the queue; how many."""

    def depth(self) -> int:
        """Jobs queued or processing."""


# Runs one job to the end: reads, detects and records the scan and marks the job done in one
# transaction; returns a one-line summary for the log. Raises ScanIncompleteError (retry later),
# another DefectwatchError (fail the job with its message) or anything else (a bug: log it).
Process = Callable[[Job], str]

# Bytes a scan file will have once complete, from its header; None while the header itself is
# incomplete. Raises ScanReadError when the file can never become a scan.
ExpectedSize = Callable[[str], "int | None"]
