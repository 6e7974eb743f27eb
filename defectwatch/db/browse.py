"""Reading the record for the web app: one scan with its run, pages of scans, a sample's
series, the review queue, waiting files. Every listing is paginated and served by an index
(``scan`` by id, ``detection_run (scan_id, id)``, ``defect (run_id)``,
``label_set (source, scan_id)``), so a record of 10,000 scans and 1,000,000 defects answers in
milliseconds.

Portable SQL (SQLite and PostgreSQL); session keyword; read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from defectwatch.db.labels import REVIEWED
from defectwatch.db.models import DefectRow, DetectionRun, Label, LabelSet, Sample, ScanRow

DEFECT_AREA_NM2 = 1.0  # about one point defect's footprint: the queue's unit of doubtful area


@dataclass(frozen=True)
class ScanWithRun:
    """A scan, its sample's name and its latest detection run (None: never run)."""

    scan: ScanRow
    sample: str | None
    run: DetectionRun | None


def is_latest_run():  # type: ignore[no-untyped-def]
    """SQL condition: this ``DetectionRun`` is its scan's latest (no run of the scan with a
    larger id; answered by the ``(scan_id, id)`` index, no grouping of every run)."""
    newer = aliased(DetectionRun)
    return ~exists().where(newer.scan_id == DetectionRun.scan_id, newer.id > DetectionRun.id)


def review_score():  # type: ignore[no-untyped-def]
    """SQL expression of a run's review score: 2 x the summed member spread of its defects
    (a detection the members disagree on completely, spread 0.5, counts 1) plus its
    near-threshold area in defect footprints (``DEFECT_AREA_NM2``)."""
    return (
        2.0 * func.coalesce(DetectionRun.uncertainty_sum, 0.0)
        + func.coalesce(DetectionRun.near_threshold_nm2, 0.0) / DEFECT_AREA_NM2
    )


def scan_with_run(scan_id: int, *, session: Session) -> ScanWithRun | None:
    """The scan with this id (None when unknown) with its sample name and latest run."""
    scan = session.get(ScanRow, scan_id)
    if scan is None:
        return None
    run = session.scalar(
        select(DetectionRun)
        .where(DetectionRun.scan_id == scan_id)
        .order_by(DetectionRun.id.desc())
        .limit(1)
    )
    sample = (
        session.scalar(select(Sample.name).where(Sample.id == scan.sample_id))
        if scan.sample_id is not None
        else None
    )
    return ScanWithRun(scan, sample, run)


def run_defects(run_id: int, *, session: Session) -> list[DefectRow]:
    """A run's defects by id (the order they were recorded)."""
    return list(
        session.scalars(select(DefectRow).where(DefectRow.run_id == run_id).order_by(DefectRow.id))
    )


def sample_id(name: str, *, session: Session) -> int | None:
    """The id of the sample called ``name`` (None when unknown)."""
    return session.scalar(select(Sample.id).where(Sample.name == name))


def scans_page(
    *,
    session: Session,
    sample_id: int | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    after_id: int | None = None,
    oldest_first: bool = False,
) -> list[ScanWithRun]:
    """A page of scans (newest first, or oldest first), with their latest runs; ``after_id``:
    only scans with a larger id (what is new since a page was drawn)."""
    query = select(ScanRow).order_by(ScanRow.id.asc() if oldest_first else ScanRow.id.desc())
    if sample_id is not None:
        query = query.where(ScanRow.sample_id == sample_id)
    if status is not None:
        query = query.where(ScanRow.status == status)
    if after_id is not None:
        query = query.where(ScanRow.id > after_id)
    scans = list(session.scalars(query.limit(limit).offset(offset)))
    return _with_runs(scans, session=session)


def _with_runs(scans: list[ScanRow], *, session: Session) -> list[ScanWithRun]:
    if not scans:
        return []
    ids = [s.id for s in scans]
    newest = (
        select(DetectionRun.scan_id, func.max(DetectionRun.id).label("run_id"))
        .where(DetectionRun.scan_id.in_(ids))
        .group_by(DetectionRun.scan_id)
        .subquery()
    )
    runs = {
        r.scan_id: r
        for r in session.scalars(
            select(DetectionRun).join(newest, newest.c.run_id == DetectionRun.id)
        )
    }
    names = dict(
        session.execute(
            select(Sample.id, Sample.name).where(
                Sample.id.in_({s.sample_id for s in scans if s.sample_id is not None})
            )
        ).all()
    )
    return [
        ScanWithRun(s, None if s.sample_id is None else names.get(s.sample_id), runs.get(s.id))
        for s in scans
    ]


def count_scans(
    *, session: Session, sample_id: int | None = None, status: str | None = None
) -> int:
    """How many scans ``scans_page`` pages through."""
    query = select(func.count(ScanRow.id))
    if sample_id is not None:
        query = query.where(ScanRow.sample_id == sample_id)
    if status is not None:
        query = query.where(ScanRow.status == status)
    return int(session.scalar(query) or 0)


def newest_ids(*, session: Session) -> tuple[int, int]:
    """(largest scan id, largest detection run id): they change when anything is recorded."""
    scan = session.scalar(select(func.max(ScanRow.id))) or 0
    run = session.scalar(select(func.max(DetectionRun.id))) or 0
    return int(scan), int(run)


@dataclass(frozen=True)
class SeriesPoint:
    """One done scan of a sample in the order it was seen: its latest run's counts."""

    scan_id: int
    area_nm2: float
    trough: int
    peak: int
    total: int


def sample_series(sample_id: int, *, session: Session) -> list[SeriesPoint]:
    """Every done scan of the sample with a detection run, oldest first."""
    rows = session.execute(
        select(
            ScanRow.id,
            DetectionRun.area_nm2,
            DetectionRun.trough_count,
            DetectionRun.peak_count,
            DetectionRun.defect_count,
        )
        .join(DetectionRun, DetectionRun.scan_id == ScanRow.id)
        .where(ScanRow.sample_id == sample_id, ScanRow.status == "done", is_latest_run())
        .order_by(ScanRow.id)
    )
    return [SeriesPoint(int(i), float(a or 0.0), int(t), int(p), int(n)) for i, a, t, p, n in rows]


def latest_done_scan_per_sample(*, session: Session) -> dict[str, int]:
    """sample name -> the id of its newest done scan that has a detection run."""
    rows = session.execute(
        select(Sample.name, func.max(DetectionRun.scan_id))
        .join(ScanRow, ScanRow.id == DetectionRun.scan_id)
        .join(Sample, Sample.id == ScanRow.sample_id)
        .where(ScanRow.status == "done")
        .group_by(Sample.name)
    )
    return {str(s): int(i) for s, i in rows}


def waiting_scans(*, session: Session, limit: int = 20) -> list[ScanRow]:
    """Queued or processing scans, the longest waiting first."""
    return list(
        session.scalars(
            select(ScanRow)
            .where(ScanRow.status.in_(("queued", "processing")))
            .order_by(ScanRow.id)
            .limit(limit)
        )
    )


def review_queue(
    *, session: Session, limit: int = 50, offset: int = 0
) -> list[tuple[ScanWithRun, float]]:
    """Done scans not yet reviewed, by their latest run's ``review_score``, highest first."""
    reviewed = select(LabelSet.scan_id).where(LabelSet.source == REVIEWED)
    score = review_score().label("score")
    rows = session.execute(
        select(ScanRow, DetectionRun, score)
        .join(DetectionRun, DetectionRun.scan_id == ScanRow.id)
        .where(ScanRow.status == "done", ScanRow.id.not_in(reviewed), is_latest_run())
        .order_by(score.desc(), ScanRow.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    names = dict(
        session.execute(
            select(Sample.id, Sample.name).where(
                Sample.id.in_({s.sample_id for s, _, _ in rows if s.sample_id is not None})
            )
        ).all()
    )
    return [(ScanWithRun(s, names.get(s.sample_id), r), float(sc)) for s, r, sc in rows]


def count_unreviewed(*, session: Session) -> int:
    """Done scans with a detection run and no review."""
    reviewed = select(LabelSet.scan_id).where(LabelSet.source == REVIEWED)
    has_run = select(DetectionRun.scan_id)
    return int(
        session.scalar(
            select(func.count(ScanRow.id)).where(
                ScanRow.status == "done", ScanRow.id.in_(has_run), ScanRow.id.not_in(reviewed)
            )
        )
        or 0
    )


def review_of(scan_id: int, *, session: Session) -> tuple[LabelSet, list[Label]] | None:
    """The scan's saved review (its ``reviewed`` label set and labels), if any."""
    found = session.scalar(
        select(LabelSet).where(LabelSet.scan_id == scan_id, LabelSet.source == REVIEWED)
    )
    if found is None:
        return None
    labels = list(
        session.scalars(
            select(Label)
            .where(Label.scan_id == scan_id, Label.source == REVIEWED)
            .order_by(Label.id)
        )
    )
    return found, labels
