"""Daemon heartbeats: a running ``watch`` process refreshes its row; ``status`` reads them.

Session keyword, never commits. A daemon is alive when its ``beat_at`` is recent (the caller
picks "recent", e.g. three beat intervals) and it has not recorded a clean stop.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from defectwatch.db.models import DaemonHeartbeat, utcnow


def beat(
    *,
    session: Session,
    pid: int,
    host: str,
    started_at: datetime,
    now: datetime | None = None,
    instrument: str | None = None,
) -> DaemonHeartbeat:
    """Record that the daemon (``host``, ``pid``, started at ``started_at``, recording for
    ``instrument``) is alive now."""
    now = now or utcnow()
    row = session.scalar(
        select(DaemonHeartbeat).where(
            DaemonHeartbeat.host == host,
            DaemonHeartbeat.pid == pid,
            DaemonHeartbeat.started_at == started_at,
        )
    )
    if row is None:
        row = DaemonHeartbeat(
            host=host, pid=pid, started_at=started_at, beat_at=now, instrument=instrument
        )
        session.add(row)
    else:
        row.beat_at = now
        row.stopped_at = None
    session.flush()
    return row


def stopped(
    *, session: Session, pid: int, host: str, started_at: datetime, now: datetime | None = None
) -> None:
    """Record a clean stop of that daemon (it is no longer counted as alive)."""
    row = session.scalar(
        select(DaemonHeartbeat).where(
            DaemonHeartbeat.host == host,
            DaemonHeartbeat.pid == pid,
            DaemonHeartbeat.started_at == started_at,
        )
    )
    if row is not None:
        row.stopped_at = now or utcnow()
        session.flush()


def alive(
    *, session: Session, within_s: float, now: datetime | None = None
) -> list[DaemonHeartbeat]:
    """Daemons that beat within the last ``within_s`` seconds and have not stopped."""
    since = (now or utcnow()) - timedelta(seconds=within_s)
    return list(
        session.scalars(
            select(DaemonHeartbeat)
            .where(DaemonHeartbeat.beat_at >= since, DaemonHeartbeat.stopped_at.is_(None))
            .order_by(DaemonHeartbeat.beat_at.desc())
        )
    )


def last_beat(*, session: Session) -> DaemonHeartbeat | None:
    """The most recent heartbeat of any daemon, alive or not."""
    return session.scalar(select(DaemonHeartbeat).order_by(DaemonHeartbeat.beat_at.desc()).limit(1))


def latest_per_daemon(*, session: Session, limit: int = 200) -> list[DaemonHeartbeat]:
    """The newest heartbeat rows (one per daemon run), newest first: every daemon that ran,
    alive or not, for listing per instrument."""
    return list(
        session.scalars(
            select(DaemonHeartbeat).order_by(DaemonHeartbeat.beat_at.desc()).limit(limit)
        )
    )
