"""Test doubles for the daemon: an in-memory `JobQueue`, a `process` that really reads the scan,
and `expected_size` over the real `.sxm` header reader. Not for production use."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectwatch.domain import Job
from defectwatch.errors import ScanIncompleteError
from defectwatch.pipeline.scan import read_scan
from defectwatch.pipeline.sxm import read_layout, write_sxm


@dataclass
class FakeJobRow:
    id: int
    path: str
    sha256: str
    size_bytes: int
    mtime_ns: int
    status: str = "queued"  # queued | processing | done | failed
    attempts: int = 0
    due_at: float = 0.0
    lease_until: float = 0.0
    worker: str | None = None
    last_error: str | None = None
    summaries: list[str] = field(default_factory=list)


class InMemoryJobQueue:
    """A test double of `defectwatch.daemon.ports.JobQueue`: the same contract, in a dict.

    Records every call in ``calls`` (method name -> count) so tests can check what was asked.
    ``clock`` returns seconds (tests move it instead of sleeping). `test_queue_contract.py`
    runs the real queue's behaviour tests against this double too, so the two cannot drift.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rows: dict[int, FakeJobRow] = {}
        self.calls: dict[str, int] = {}
        self.clock = clock
        self._lock = threading.Lock()

    def _held(self, job: Job) -> FakeJobRow | None:
        """The row while ``job``'s claim still holds it (as the real queue's WHERE clause)."""
        r = self.rows[job.id]
        return r if r.status == "processing" and r.attempts == job.attempts else None

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    # -- the JobQueue protocol --
    def is_known(self, path: str, *, size_bytes: int, mtime_ns: int) -> bool:
        with self._lock:
            self._count("is_known")
            return any(
                r.path == path and r.size_bytes == size_bytes and r.mtime_ns == mtime_ns
                for r in self.rows.values()
            )

    def enqueue(self, path: str, *, sha256: str, size_bytes: int, mtime_ns: int) -> bool:
        with self._lock:
            self._count("enqueue")
            if any(r.sha256 == sha256 for r in self.rows.values()):
                return False
            job_id = len(self.rows) + 1
            self.rows[job_id] = FakeJobRow(job_id, path, sha256, size_bytes, mtime_ns)
            return True

    def claim(self, *, worker: str, lease_s: float) -> Job | None:
        with self._lock:
            self._count("claim")
            now = self.clock()
            for r in sorted(self.rows.values(), key=lambda r: r.id):
                due = (r.status == "queued" and r.due_at <= now) or (
                    r.status == "processing" and r.lease_until < now
                )
                if due:
                    r.status, r.worker, r.lease_until = "processing", worker, now + lease_s
                    r.attempts += 1
                    return Job(r.id, r.path, r.sha256, r.attempts)
            return None

    def retry(self, job: Job, *, reason: str, delay_s: float, max_attempts: int) -> bool:
        with self._lock:
            self._count("retry")
            r = self._held(job)
            if r is None:  # the claim was lost: nothing sticks
                return False
            if job.attempts >= max_attempts:
                r.status = "failed"
                r.last_error = f"{reason} (gave up after {job.attempts} attempts)"
                return False
            r.status, r.due_at, r.last_error = "queued", self.clock() + delay_s, reason
            return True

    def fail(self, job: Job, *, reason: str) -> None:
        with self._lock:
            self._count("fail")
            r = self._held(job)
            if r is not None:
                r.status, r.last_error = "failed", reason

    def requeue_expired(self) -> int:
        with self._lock:
            self._count("requeue_expired")
            now = self.clock()
            n = 0
            for r in self.rows.values():
                if r.status == "processing" and r.lease_until < now:
                    r.status = "queued"
                    n += 1
            return n

    def depth(self) -> int:
        with self._lock:
            return sum(r.status in ("queued", "processing") for r in self.rows.values())

    # -- what the real `process` does in its own transaction --
    def mark_done(self, job: Job, summary: str) -> bool:
        """Done with ``summary``; False (nothing recorded) when the claim was lost."""
        with self._lock:
            r = self._held(job)
            if r is None:
                return False
            r.status = "done"
            r.summaries.append(summary)
            return True

    # -- for assertions --
    def by_name(self) -> dict[str, FakeJobRow]:
        with self._lock:
            return {Path(r.path).name: r for r in self.rows.values()}


def sxm_expected_size(path: str) -> int | None:
    """Bytes the file will have from its header; None while it is shorter than promised."""
    try:
        return read_layout(path).expected_size
    except ScanIncompleteError:
        return None


class ReadingProcess:
    """A `process(job)` that really reads the scan (so incomplete and corrupt files raise the
    reader's errors) and marks the job done; ``delay_s`` makes each scan take that long."""

    def __init__(self, queue: InMemoryJobQueue, *, delay_s: float = 0.0) -> None:
        self.queue = queue
        self.delay_s = delay_s
        self.seen: list[str] = []
        self.started = threading.Event()
        self.finished = threading.Event()

    def __call__(self, job: Job) -> str:
        self.started.set()
        self.seen.append(job.path)
        scan = read_scan(job.path)
        if self.delay_s:
            time.sleep(self.delay_s)
        summary = f"{Path(job.path).name}: {scan.nx}x{scan.ny} px"
        self.queue.mark_done(job, summary)
        self.finished.set()
        return summary


def sxm_bytes(seed: int = 0, *, pixels: int = 64) -> bytes:
    """A real small `.sxm` file's bytes (Z forward and backward, random heights)."""
    rng = np.random.default_rng(seed)
    images = {
        ("Z", d): rng.normal(0, 1e-10, (pixels, pixels)).astype(np.float32)
        for d in ("forward", "backward")
    }
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / "scan.sxm"
        write_sxm(tmp, images=images, units={"Z": "m"}, width_m=10e-9, height_m=10e-9)
        return tmp.read_bytes()


def write_scan(path: Path, seed: int = 0, *, pixels: int = 64) -> Path:
    """Write a complete scan at ``path`` (at once) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sxm_bytes(seed, pixels=pixels))
    return path
