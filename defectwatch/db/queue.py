"""The durable job queue: one ``scan`` row per file content, leased to one worker at a time.

``SqlJobQueue`` implements ``defectwatch.daemon.ports.JobQueue`` by shape (db does not import
daemon). Unlike other db code it owns its transactions: each call is one short write
transaction (``BEGIN IMMEDIATE`` on SQLite; ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so two processes never claim the same job.

A claim bumps ``attempts``; ``retry``, ``fail`` and ``mark_done`` only touch a job still held
under that claim (same ``attempts``, status processing), so a worker whose lease expired and was
re-claimed elsewhere cannot overwrite the newer outcome.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from defectwatch.db.engine import unreachable_as_error, write_transaction
from defectwatch.db.models import ScanRow, utcnow
from defectwatch.db.records import get_or_create_sample
from defectwatch.domain import Job

log = logging.getLogger(__name__)

SampleFor = Callable[[str], "str | None"]
_F = TypeVar("_F", bound=Callable[..., Any])


def _reaching(method: _F) -> _F:
    """A queue method whose "server unreachable" errors become DatabaseUnavailableError (the
    worker then waits with backoff instead of treating it as a bug)."""

    @functools.wraps(method)
    def wrapper(self: SqlJobQueue, *args: Any, **kwargs: Any) -> Any:
        with unreachable_as_error(self.engine):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _claimed(job: Job):  # type: ignore[no-untyped-def]
    """WHERE clause: the scan row is still held under this claim."""
    return and_(
        ScanRow.id == job.id, ScanRow.status == "processing", ScanRow.attempts == job.attempts
    )


def due_query(now: datetime, *, dialect: str) -> Select[ScanRow]:
    """The oldest job due at ``now``: queued and past its backoff, or its lease expired. On
    servers (not SQLite, whose BEGIN IMMEDIATE already serialises writers) the row is locked
    and rows other workers hold are skipped."""
    due = or_(
        and_(
            ScanRow.status == "queued", or_(ScanRow.not_before.is_(None), ScanRow.not_before <= now)
        ),
        and_(ScanRow.status == "processing", ScanRow.lease_expires_at < now),
    )
    query = select(ScanRow).where(due).order_by(ScanRow.id).limit(1)
    if dialect != "sqlite":
        query = query.with_for_update(skip_locked=True, of=ScanRow)
    return query


def mark_done(job: Job, *, session: Session) -> bool:
    """Mark a claimed job done inside the caller's transaction (with its results); False when
    the claim was lost (lease expired and re-claimed): then record nothing."""
    now = utcnow()
    result = session.execute(
        update(ScanRow)
        .where(_claimed(job))
        .values(
            status="done", lease_owner=None, lease_expires_at=None, last_error=None, updated_at=now
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


class SqlJobQueue:
    """The daemon's queue on top of the ``scan`` table.

    ``sample_for(path)`` names the sample of a new file (None: no sample); ``instrument``: the
    microscope new files come from (recorded on each scan); ``clock`` returns the current UTC
    time (tests move it forward instead of sleeping).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        sample_for: SampleFor | None = None,
        clock: Callable[[], datetime] = utcnow,
        instrument: str | None = None,
    ) -> None:
        self.engine = engine
        self.sample_for = sample_for
        self.clock = clock
        self.instrument = instrument

    @_reaching
    def is_known(self, path: str, *, size_bytes: int, mtime_ns: int) -> bool:
        """True when this path with this size and mtime was enqueued before."""
        with self._read() as s:
            found = s.scalar(
                select(ScanRow.id)
                .where(
                    ScanRow.path == path,
                    ScanRow.size_bytes == size_bytes,
                    ScanRow.mtime_ns == mtime_ns,
                )
                .limit(1)
            )
        return found is not None

    @_reaching
    def enqueue(self, path: str, *, sha256: str, size_bytes: int, mtime_ns: int) -> bool:
        """Queue a ready file; False (nothing new) when its content (sha256) is known."""
        sample = self.sample_for(path) if self.sample_for else None
        now = self.clock()
        try:
            with write_transaction(self.engine) as s:
                known = s.scalar(select(ScanRow.id).where(ScanRow.sha256 == sha256))
                if known is not None:
                    log.debug("%s: content already recorded as scan %d", path, known)
                    return False
                sample_row = get_or_create_sample(sample, session=s) if sample else None
                s.add(
                    ScanRow(
                        path=path,
                        sha256=sha256,
                        size_bytes=size_bytes,
                        mtime_ns=mtime_ns,
                        sample=sample_row,
                        status="queued",
                        instrument=self.instrument,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:  # another process enqueued the same content just now?
            with self._read() as s:
                if s.scalar(select(ScanRow.id).where(ScanRow.sha256 == sha256)) is None:
                    raise
            log.debug("%s: enqueued concurrently elsewhere", path)
            return False
        log.info("queued %s (sample %s)", path, sample or "-")
        return True

    @_reaching
    def claim(self, *, worker: str, lease_s: float) -> Job | None:
        """Lease the oldest due job (queued and past its backoff, or lease expired)."""
        now = self.clock()
        query = due_query(now, dialect=self.engine.dialect.name)
        with write_transaction(self.engine) as s:
            row = s.scalars(query).first()
            if row is None:
                return None
            row.status = "processing"
            row.attempts += 1
            row.lease_owner = worker
            row.lease_expires_at = now + timedelta(seconds=lease_s)
            row.updated_at = now
            job = Job(
                id=row.id,
                path=row.path,
                sha256=row.sha256,
                attempts=row.attempts,
                sample=row.sample.name if row.sample else None,
            )
        log.debug("%s claimed %s (attempt %d)", worker, job.path, job.attempts)
        return job

    @_reaching
    def retry(self, job: Job, *, reason: str, delay_s: float, max_attempts: int) -> bool:
        """Re-queue after ``delay_s``, or mark failed once ``max_attempts`` is reached."""
        if job.attempts >= max_attempts:
            self._finish(
                job, status="failed", reason=f"{reason} (gave up after {job.attempts} attempts)"
            )
            return False
        now = self.clock()
        with write_transaction(self.engine) as s:
            result = s.execute(
                update(ScanRow)
                .where(_claimed(job))
                .values(
                    status="queued",
                    last_error=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                    not_before=now + timedelta(seconds=delay_s),
                    updated_at=now,
                )
            )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("%s: lost its lease before the retry was recorded", job.path)
            return False
        return True

    @_reaching
    def fail(self, job: Job, *, reason: str) -> None:
        """Mark the job failed for good with ``reason``."""
        self._finish(job, status="failed", reason=reason)

    @_reaching
    def requeue_expired(self) -> int:
        """Put jobs whose lease expired (a killed worker) back in the queue; how many."""
        now = self.clock()
        with write_transaction(self.engine) as s:
            result = s.execute(
                update(ScanRow)
                .where(ScanRow.status == "processing", ScanRow.lease_expires_at < now)
                .values(status="queued", lease_owner=None, lease_expires_at=None, updated_at=now)
            )
        n = int(result.rowcount)  # type: ignore[attr-defined]
        if n:
            log.info("re-queued %d job(s) whose lease expired", n)
        return n

    @_reaching
    def release_dead_workers(self, *, host: str, is_alive: Callable[[int], bool]) -> int:
        """Re-queue jobs leased by workers on ``host`` (owner ``host:pid``) whose process is
        gone (``is_alive(pid)`` False): a daemon killed with kill -9 on this machine does not
        hold its scan until the lease expires. How many."""
        now = self.clock()
        released = 0
        with write_transaction(self.engine) as s:
            owners = s.scalars(
                select(ScanRow.lease_owner).where(
                    ScanRow.status == "processing", ScanRow.lease_owner.like(f"{host}:%")
                )
            ).all()
            for owner in set(owners):
                pid = (owner or "").rpartition(":")[2]
                if not pid.isdigit() or is_alive(int(pid)):
                    continue
                result = s.execute(
                    update(ScanRow)
                    .where(ScanRow.status == "processing", ScanRow.lease_owner == owner)
                    .values(
                        status="queued", lease_owner=None, lease_expires_at=None, updated_at=now
                    )
                )
                released += int(result.rowcount)  # type: ignore[attr-defined]
        if released:
            log.info("re-queued %d job(s) held by dead workers on %s", released, host)
        return released

    @_reaching
    def depth(self) -> int:
        """Jobs queued or processing."""
        with self._read() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(ScanRow)
                    .where(ScanRow.status.in_(("queued", "processing")))
                )
                or 0
            )

    def _finish(self, job: Job, *, status: str, reason: str) -> None:
        now = self.clock()
        with write_transaction(self.engine) as s:
            result = s.execute(
                update(ScanRow)
                .where(_claimed(job))
                .values(
                    status=status,
                    last_error=reason,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("%s: lost its lease before it was marked %s", job.path, status)
        else:
            log.info("%s: %s (%s)", job.path, status, reason)

    def _read(self) -> Session:
        return Session(self.engine, expire_on_commit=False)
