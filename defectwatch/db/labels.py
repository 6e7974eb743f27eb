"""Labels in the record: label sets (one scan, one source) and their label rows.

A label set is what one label file (``via:labels.csv``) or one review (``accepted``;
``reviewed``: saved in the web app) says about one scan. Importing the same source again
replaces that scan's set, so nothing is counted twice.
Its ``exhaustive`` flag (every defect marked) is copied onto its ``label`` rows; a scan is
exhaustively labelled when any of its sets is, also when that set holds no label (a clean scan).
Positions are the scan's pixels: ``(row, col)``, row 0 = top of the frame; radii in nm.

Session keyword, never commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Protocol

from sqlalchemy import case, delete, func, insert, select
from sqlalchemy.orm import Session

from defectwatch.db.models import Label, LabelSet, Sample, ScanRow, utcnow
from defectwatch.domain import KINDS
from defectwatch.errors import ConfigError

log = logging.getLogger(__name__)

REVIEWED = "reviewed"  # the source of a review saved in the web app (one set per scan)


class LabelPoint(Protocol):
    """A labelled position (``label_formats.PointLabel`` is one): scan pixels and nm."""

    @property
    def row(self) -> float: ...
    @property
    def col(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def radius_nm(self) -> float | None: ...


@dataclass(frozen=True)
class SetInfo:
    """One label set of a scan, as ``labels list`` shows it."""

    source: str
    exhaustive: bool
    labels: int
    file: str | None


@dataclass(frozen=True)
class ScanLabels:
    """A labelled scan: its row, sample, label sets and (optionally) label rows."""

    scan: ScanRow
    sample: str | None
    sets: tuple[SetInfo, ...]
    counts: dict[str, int]  # per kind, over all sets
    labels: tuple[Label, ...] = field(default=(), repr=False)

    @property
    def exhaustive(self) -> bool:
        """Every defect of the scan is marked (by at least one of its sets)."""
        return any(s.exhaustive for s in self.sets)


def file_name(path: str) -> str:
    """The file name of a recorded path, POSIX or Windows (``C:\\scans\\a.sxm`` -> ``a.sxm``)."""
    return PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name


def file_stem(path: str) -> str:
    """The stem of a recorded path, POSIX or Windows (``C:\\scans\\a.sxm`` -> ``a``)."""
    return PurePosixPath(file_name(path)).stem


def label_sets(scan_id: int, *, session: Session) -> list[LabelSet]:
    """The scan's label sets, oldest first."""
    return list(
        session.scalars(select(LabelSet).where(LabelSet.scan_id == scan_id).order_by(LabelSet.id))
    )


def scans_by_stem(stems: Iterable[str], *, session: Session) -> dict[str, list[ScanRow]]:
    """Recorded scans whose file stem equals one of ``stems`` (case-insensitive), keyed by the
    lower-cased stem; stems without a scan are absent."""
    wanted = {s.lower() for s in stems}
    if not wanted:
        return {}
    out: dict[str, list[ScanRow]] = {}
    ids: list[tuple[str, int]] = []
    for scan_id, path in session.execute(select(ScanRow.id, ScanRow.path).order_by(ScanRow.id)):
        stem = file_stem(path).lower()
        if stem in wanted:
            ids.append((stem, scan_id))
    rows = (
        {
            r.id: r
            for r in session.scalars(select(ScanRow).where(ScanRow.id.in_([i for _, i in ids])))
        }
        if ids
        else {}
    )
    for stem, scan_id in ids:
        out.setdefault(stem, []).append(rows[scan_id])
    return out


def replace_labels(
    scan_id: int,
    labels: Sequence[LabelPoint],
    *,
    session: Session,
    source: str,
    exhaustive: bool,
    file: str | None = None,
) -> LabelSet:
    """Make ``labels`` the scan's label set from ``source`` (its earlier labels from that
    source are deleted). An empty ``labels`` still records the set (a clean scan when
    ``exhaustive``)."""
    source = source.strip()
    if not source:
        raise ConfigError("a label source is empty (e.g. 'via:labels.csv' or 'accepted')")
    if len(source) > 200:
        source = source[:200]
    bad = sorted({p.kind for p in labels} - set(KINDS))
    if bad:
        raise ConfigError(f"label kinds {bad} are not {' or '.join(KINDS)}")
    session.execute(delete(Label).where(Label.scan_id == scan_id, Label.source == source))
    now = utcnow()
    if labels:
        session.execute(
            insert(Label),
            [
                {
                    "scan_id": scan_id,
                    "row": float(p.row),
                    "col": float(p.col),
                    "kind": p.kind,
                    "radius_nm": None if p.radius_nm is None else float(p.radius_nm),
                    "source": source,
                    "exhaustive": bool(exhaustive),
                    "created_at": now,
                }
                for p in labels
            ],
        )
    found = session.scalar(
        select(LabelSet).where(LabelSet.scan_id == scan_id, LabelSet.source == source)
    )
    if found is None:
        found = LabelSet(scan_id=scan_id, source=source)
        session.add(found)
    found.exhaustive = bool(exhaustive)
    found.labels = len(labels)
    found.file = file
    found.updated_at = now
    session.flush()
    log.debug(
        "scan %d: %d labels from %s (%s)",
        scan_id,
        len(labels),
        source,
        "exhaustive" if exhaustive else "partial",
    )
    return found


def delete_labels(scan_id: int, *, session: Session, source: str | None = None) -> int:
    """Delete a scan's labels (from one source, or all) with their sets; returns the number of
    label rows deleted."""
    where = [Label.scan_id == scan_id] + ([Label.source == source] if source else [])
    n = session.execute(delete(Label).where(*where)).rowcount or 0  # type: ignore[attr-defined]
    set_where = [LabelSet.scan_id == scan_id] + ([LabelSet.source == source] if source else [])
    session.execute(delete(LabelSet).where(*set_where))
    session.flush()
    return int(n)


def labelled_scans(
    *, session: Session, sample: str | None = None, with_labels: bool = False
) -> list[ScanLabels]:
    """Every scan with at least one label set (also an empty one), oldest first, with its sets
    and counts per kind; ``with_labels`` also loads the label rows (reading order)."""
    sets_by_scan: dict[int, list[SetInfo]] = {}
    for s in session.scalars(select(LabelSet).order_by(LabelSet.scan_id, LabelSet.id)):
        sets_by_scan.setdefault(s.scan_id, []).append(
            SetInfo(s.source, bool(s.exhaustive), int(s.labels), s.file)
        )
    # label rows without a set (written before sets existed, or by other code)
    orphans = session.execute(
        select(
            Label.scan_id,
            Label.source,
            func.count(),
            func.max(case((Label.exhaustive.is_(True), 1), else_=0)),
        ).group_by(Label.scan_id, Label.source)
    )
    for scan_id, source, n, any_exhaustive in orphans:
        known = {s.source for s in sets_by_scan.get(scan_id, [])}
        if source not in known:
            sets_by_scan.setdefault(scan_id, []).append(
                SetInfo(source, bool(any_exhaustive), int(n), None)
            )
    if not sets_by_scan:
        return []
    query = (
        select(ScanRow, Sample.name)
        .outerjoin(Sample, Sample.id == ScanRow.sample_id)
        .where(ScanRow.id.in_(list(sets_by_scan)))
        .order_by(ScanRow.id)
    )
    if sample is not None:
        query = query.where(Sample.name == sample)
    scans = list(session.execute(query))
    counts: dict[int, dict[str, int]] = {}
    for scan_id, kind, n in session.execute(
        select(Label.scan_id, Label.kind, func.count())
        .where(Label.scan_id.in_([s.id for s, _ in scans]))
        .group_by(Label.scan_id, Label.kind)
    ):
        counts.setdefault(scan_id, dict.fromkeys(KINDS, 0))[kind] = int(n)
    rows: dict[int, list[Label]] = {}
    if with_labels and scans:
        for label in session.scalars(
            select(Label)
            .where(Label.scan_id.in_([s.id for s, _ in scans]))
            .order_by(Label.scan_id, Label.row, Label.col, Label.id)
        ):
            rows.setdefault(label.scan_id, []).append(label)
    return [
        ScanLabels(
            scan=s,
            sample=name,
            sets=tuple(sets_by_scan[s.id]),
            counts=counts.get(s.id, dict.fromkeys(KINDS, 0)),
            labels=tuple(rows.get(s.id, ())),
        )
        for s, name in scans
    ]
