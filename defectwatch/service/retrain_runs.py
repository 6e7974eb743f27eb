"""Use cases around the retrain's history: skip a night when no label changed, record each
run's outcome, and show the latest outcomes (``models list``, ``status``).

A night is skipped when the labels a retrain would see (`db.retrain_runs.labels_fingerprint`)
are those the active version was trained on (the run that made it, or its config's
``data.labels_fingerprint``) or those the last candidate trained from the active version saw
(it was kept out; the same labels would make the same refusal every night). ``--force``
retrains anyway.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.db.models import RetrainRun
from defectwatch.db.retrain_runs import add_run, labels_fingerprint, list_runs

log = logging.getLogger(__name__)


def current_fingerprint(engine: Engine) -> str:
    """The fingerprint of the labels in the record now."""
    with read_transaction(engine) as session:
        return labels_fingerprint(session=session)


def unchanged_since(
    engine: Engine, *, active: str, active_data: dict[str, Any], fingerprint: str
) -> str | None:
    """Why a retrain from ``active`` would learn nothing new (one sentence), or None when
    labels changed (or nothing is known about what ``active`` was trained on)."""
    if active_data.get("labels_fingerprint") == fingerprint:
        return f"no label changed since the active version {active} was trained"
    with read_transaction(engine) as session:
        made = session.scalar(
            select(RetrainRun)
            .where(RetrainRun.version == active, RetrainRun.outcome.in_(("promoted", "candidate")))
            .order_by(RetrainRun.id.desc())
            .limit(1)
        )
        last = session.scalar(
            select(RetrainRun)
            .where(RetrainRun.parent == active, RetrainRun.outcome.in_(("promoted", "candidate")))
            .order_by(RetrainRun.id.desc())
            .limit(1)
        )
        if made is not None and made.labels_fingerprint == fingerprint:
            return f"no label changed since the active version {active} was trained"
        if last is not None and last.labels_fingerprint == fingerprint:
            return (
                f"no label changed since {last.version} was trained from {active} on "
                f"{last.started_at:%Y-%m-%d %H:%M} UTC ({last.outcome}: {last.reason})"
            )
    return None


def record_outcome(
    engine: Engine,
    outcome: str,
    *,
    reason: str,
    started_at: datetime,
    version: str | None = None,
    parent: str | None = None,
    recipe: str | None = None,
    fingerprint: str | None = None,
    seconds: float | None = None,
) -> None:
    """One ``retrain_run`` row, and the same in the log."""
    with write_transaction(engine) as session:
        add_run(
            outcome,
            session=session,
            reason=reason,
            started_at=started_at,
            version=version,
            parent=parent,
            recipe=recipe,
            labels_fingerprint=fingerprint,
            seconds=seconds,
        )
    log.info("retrain %s%s: %s", outcome, f" ({version})" if version else "", reason)


def runs_report(engine: Engine, *, limit: int = 10) -> list[dict[str, Any]]:
    """The latest runs, newest first, as JSON-ready objects: ``started_at, finished_at,
    outcome, version, parent, recipe, reason, seconds``."""
    with read_transaction(engine) as session:
        return [
            {
                "started_at": r.started_at.isoformat() if r.started_at else None,
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "outcome": r.outcome,
                "version": r.version,
                "parent": r.parent,
                "recipe": r.recipe,
                "reason": r.reason,
                "seconds": r.seconds,
            }
            for r in list_runs(session=session, limit=limit)
        ]


def outcome_by_version(engine: Engine) -> dict[str, dict[str, Any]]:
    """For each version a retrain made: how its run ended (``outcome``, ``reason``)."""
    with read_transaction(engine) as session:
        rows = session.scalars(
            select(RetrainRun).where(RetrainRun.version.is_not(None)).order_by(RetrainRun.id)
        )
        return {
            r.version: {"outcome": r.outcome, "reason": r.reason}
            for r in rows
            if r.version is not None
        }
