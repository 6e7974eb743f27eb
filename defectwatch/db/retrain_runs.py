"""The retrain's own history: one ``retrain_run`` row per run, and a fingerprint of the labels
a run learns from, so a night with no new label can be skipped. Session keyword, never commits.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from defectwatch.db.models import Label, LabelSet, RetrainRun, utcnow

OUTCOMES = ("promoted", "candidate", "skipped", "failed")


def labels_fingerprint(*, session: Session) -> str:
    """sha256 (hex) of every label (scan, position, kind, radius, exhaustive flag) and every
    label set (scan, source, exhaustive): equal exactly when a retrain would see the same
    labels. Independent of row ids and import times, so importing the same file again does
    not count as a change."""
    h = hashlib.sha256()
    for row in session.execute(
        select(
            Label.scan_id,
            Label.row,
            Label.col,
            Label.kind,
            Label.radius_nm,
            Label.exhaustive,
            Label.source,
        ).order_by(Label.scan_id, Label.source, Label.row, Label.col, Label.kind)
    ):
        scan_id, r, c, kind, radius, exhaustive, source = row
        h.update(
            f"L{scan_id}|{r:.4f}|{c:.4f}|{kind}|{radius}|{int(bool(exhaustive))}|"
            f"{source}\n".encode()
        )
    for scan_id, source, exhaustive in session.execute(
        select(LabelSet.scan_id, LabelSet.source, LabelSet.exhaustive).order_by(
            LabelSet.scan_id, LabelSet.source
        )
    ):
        h.update(f"S{scan_id}|{source}|{int(bool(exhaustive))}\n".encode())
    return h.hexdigest()


def add_run(
    outcome: str,
    *,
    session: Session,
    reason: str,
    started_at: datetime,
    version: str | None = None,
    parent: str | None = None,
    recipe: str | None = None,
    labels_fingerprint: str | None = None,
    seconds: float | None = None,
) -> RetrainRun:
    """Record one finished run (ValueError for an unknown ``outcome``)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"retrain outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
    run = RetrainRun(
        started_at=started_at,
        finished_at=utcnow(),
        outcome=outcome,
        version=version,
        parent=parent,
        recipe=recipe,
        reason=reason,
        labels_fingerprint=labels_fingerprint,
        seconds=seconds,
    )
    session.add(run)
    session.flush()
    return run


def list_runs(*, session: Session, limit: int | None = None) -> list[RetrainRun]:
    """Runs, newest first (``limit`` of them)."""
    query = select(RetrainRun).order_by(RetrainRun.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def trained_fingerprint(parent: str, *, session: Session) -> str | None:
    """The labels fingerprint of the latest run that trained a candidate from ``parent``
    (promoted or kept out), None when there was none."""
    return session.scalar(
        select(RetrainRun.labels_fingerprint)
        .where(RetrainRun.parent == parent, RetrainRun.outcome.in_(("promoted", "candidate")))
        .order_by(RetrainRun.id.desc())
        .limit(1)
    )
