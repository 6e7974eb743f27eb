"""Data sets for retraining: labelled scans and their frozen train/test split.

A labelled scan is assigned to ``train`` or ``test`` the first time a retrain sees it, and
never moves: every model version is compared on the same test scans, and the test split only
grows (by new scans). Assignment is deterministic: new scans are taken in order of their
content hash (``scan.sha256``, itself uniformly random) and each goes to ``test`` while the
test split holds fewer than ``round(test_share * assigned scans)`` (at least one), else to
``train``. On first use with 4 scans that is 1 test scan, with 15 scans 4.

Session keyword, never commits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from defectwatch.db.labels import REVIEWED
from defectwatch.db.models import Label, LabelSet, ScanRow, SplitAssignment, utcnow

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
TEST_SHARE = 0.25


def trainable_scans(*, session: Session) -> list[ScanRow]:
    """Scans a model can learn from, oldest first: those with at least one label, and those
    labelled clean (an exhaustive label set holding no label)."""
    has_label = select(Label.scan_id)
    clean = select(LabelSet.scan_id).where(LabelSet.exhaustive.is_(True))
    return list(
        session.scalars(
            select(ScanRow)
            .where(or_(ScanRow.id.in_(has_label), ScanRow.id.in_(clean)))
            .order_by(ScanRow.id)
        )
    )


def reviewed_sets(scan_ids: Iterable[int], *, session: Session) -> dict[int, bool]:
    """The scans among ``scan_ids`` reviewed in the web app: scan id -> the review's
    exhaustive flag. A review is the reviewer's last word on the scan: it supersedes the
    scan's other label sets for training (a rejected detection stays rejected)."""
    ids = list(scan_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(LabelSet.scan_id, LabelSet.exhaustive).where(
            LabelSet.scan_id.in_(ids), LabelSet.source == REVIEWED
        )
    )
    return {int(i): bool(e) for i, e in rows}


def exhaustive_scan_ids(scan_ids: Iterable[int], *, session: Session) -> set[int]:
    """The scans among ``scan_ids`` whose every defect is marked: any of their label sets (or
    label rows) says so; for a reviewed scan, its review says so."""
    ids = list(scan_ids)
    if not ids:
        return set()
    reviewed = reviewed_sets(ids, session=session)
    sets = session.scalars(
        select(LabelSet.scan_id).where(LabelSet.scan_id.in_(ids), LabelSet.exhaustive.is_(True))
    )
    rows = session.scalars(
        select(Label.scan_id).where(Label.scan_id.in_(ids), Label.exhaustive.is_(True))
    )
    found = {int(i) for i in sets} | {int(i) for i in rows}
    return {i for i in found if i not in reviewed} | {i for i, e in reviewed.items() if e}


def scan_labels(scan_ids: Iterable[int], *, session: Session) -> dict[int, list[Label]]:
    """The labels of these scans, per scan id (in insertion order); scans without labels are
    absent. A reviewed scan gives its review's labels only (`reviewed_sets`)."""
    ids = list(scan_ids)
    out: dict[int, list[Label]] = {}
    if not ids:
        return out
    reviewed = reviewed_sets(ids, session=session)
    for label in session.scalars(
        select(Label).where(Label.scan_id.in_(ids)).order_by(Label.scan_id, Label.id)
    ):
        if label.scan_id in reviewed and label.source != REVIEWED:
            continue
        out.setdefault(label.scan_id, []).append(label)
    return out


def label_counts(*, session: Session) -> dict[int, int]:
    """Labels per labelled scan id."""
    rows = session.execute(select(Label.scan_id, func.count()).group_by(Label.scan_id))
    return {int(scan_id): int(n) for scan_id, n in rows}


def split_assignments(*, session: Session) -> dict[int, str]:
    """Every frozen assignment: scan id -> ``train`` | ``test``."""
    rows = session.execute(select(SplitAssignment.scan_id, SplitAssignment.split))
    return {int(scan_id): str(split) for scan_id, split in rows}


def target_test_count(n_scans: int, *, test_share: float = TEST_SHARE) -> int:
    """Test scans wanted among ``n_scans`` assigned ones: round half up, at least 1."""
    if n_scans <= 0:
        return 0
    return max(1, math.floor(test_share * n_scans + 0.5))


def assign_splits(
    scan_ids: Sequence[int],
    *,
    session: Session,
    test_share: float = TEST_SHARE,
    now: datetime | None = None,
) -> dict[int, str]:
    """Assign the scans among ``scan_ids`` that have no split yet; existing assignments are
    kept as they are. Returns the split of every scan in ``scan_ids``."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie between 0 and 1, got {test_share!r}")
    existing = split_assignments(session=session)
    new_ids = [i for i in dict.fromkeys(scan_ids) if i not in existing]
    if new_ids:
        hashes = dict(
            session.execute(select(ScanRow.id, ScanRow.sha256).where(ScanRow.id.in_(new_ids))).all()
        )
        missing = [i for i in new_ids if i not in hashes]
        if missing:
            raise ValueError(f"no scan with id {missing[0]} in the record")
        n_assigned = len(existing)
        n_test = sum(1 for s in existing.values() if s == "test")
        when = now or utcnow()
        for scan_id in sorted(new_ids, key=lambda i: (hashes[i], i)):
            n_assigned += 1
            split = (
                "test" if n_test < target_test_count(n_assigned, test_share=test_share) else "train"
            )
            n_test += split == "test"
            session.add(SplitAssignment(scan_id=scan_id, split=split, assigned_at=when))
            existing[scan_id] = split
        session.flush()
        log.info(
            "assigned %d new scan(s) to the frozen splits (%d test of %d)",
            len(new_ids),
            n_test,
            n_assigned,
        )
    return {i: existing[i] for i in scan_ids}
