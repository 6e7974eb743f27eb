"""Reading the record: per-sample totals, scan listings, defects, queue state.

Portable SQL only (SQLite and PostgreSQL). A scan counts once, through its latest detection run
(highest id), and only when its status is ``done``. Session keyword; read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath, PurePosixPath, PureWindowsPath

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from defectwatch.db.models import DefectRow, DetectionRun, Sample, ScanRow


@dataclass(frozen=True)
class SampleTotals:
    """One sample: scans by status and, over its done scans' latest runs, area and counts."""

    sample: str | None
    scans: int  # all statuses
    done: int
    failed: int
    pending: int  # queued or processing
    area_nm2: float  # acquired area of the done scans
    trough: int
    peak: int
    total: int
    latest_seen_at: datetime | None  # when defectwatch first saw its newest scan (UTC)
    latest_path: str | None  # that scan's path
    counted: int = 0  # done scans with a detection run (images recorded for labels have none)


def latest_runs():  # type: ignore[no-untyped-def]
    """Subquery (scan_id, run_id): each scan's latest detection run."""
    return (
        select(DetectionRun.scan_id, func.max(DetectionRun.id).label("run_id"))
        .group_by(DetectionRun.scan_id)
        .subquery("latest_run")
    )


def sample_names(*, session: Session) -> list[str]:
    """All sample names, sorted."""
    return list(session.scalars(select(Sample.name).order_by(Sample.name)))


def sample_totals(
    *, session: Session, samples: Sequence[str] | None = None, instrument: str | None = None
) -> list[SampleTotals]:
    """Totals per sample (all samples, or those named), sorted by name; scans without a
    sample come last as ``sample=None``. With ``instrument``, only that instrument's scans
    (and only the samples it has scans of)."""

    def is_(status: str):  # type: ignore[no-untyped-def]
        return func.sum(case((ScanRow.status == status, 1), else_=0))

    by_status = select(
        ScanRow.sample_id,
        func.count(ScanRow.id),
        is_("done"),
        is_("failed"),
        func.sum(case((ScanRow.status.in_(("queued", "processing")), 1), else_=0)),
        func.max(ScanRow.id),
    ).group_by(ScanRow.sample_id)
    latest = latest_runs()
    sums = (
        select(
            ScanRow.sample_id,
            func.count(ScanRow.id),
            func.sum(DetectionRun.area_nm2),
            func.sum(DetectionRun.trough_count),
            func.sum(DetectionRun.peak_count),
            func.sum(DetectionRun.defect_count),
        )
        .join(latest, latest.c.scan_id == ScanRow.id)
        .join(DetectionRun, DetectionRun.id == latest.c.run_id)
        .where(ScanRow.status == "done")
        .group_by(ScanRow.sample_id)
    )
    names = dict(session.execute(select(Sample.id, Sample.name)).all())
    if samples is not None:
        wanted = {sid for sid, name in names.items() if name in set(samples)}
        by_status = by_status.where(ScanRow.sample_id.in_(wanted))
        sums = sums.where(ScanRow.sample_id.in_(wanted))
    if instrument is not None:
        by_status = by_status.where(ScanRow.instrument == instrument)
        sums = sums.where(ScanRow.instrument == instrument)
    counted = {row[0]: row[1:] for row in session.execute(sums)}
    rows = session.execute(by_status).all()
    newest = {
        r.id: r
        for r in session.scalars(select(ScanRow).where(ScanRow.id.in_([row[5] for row in rows])))
    }
    out = []
    for sample_id, scans, done, failed, pending, newest_id in rows:
        n_counted, area, trough, peak, total = counted.get(sample_id, (0, 0.0, 0, 0, 0))
        latest_row = newest.get(newest_id)
        out.append(
            SampleTotals(
                sample=names.get(sample_id) if sample_id is not None else None,
                scans=int(scans),
                done=int(done or 0),
                failed=int(failed or 0),
                pending=int(pending or 0),
                area_nm2=float(area or 0.0),
                trough=int(trough or 0),
                peak=int(peak or 0),
                total=int(total or 0),
                latest_seen_at=latest_row.created_at if latest_row else None,
                latest_path=latest_row.path if latest_row else None,
                counted=int(n_counted or 0),
            )
        )
    known = set(names.values()) if instrument is None else set()
    asked = known if samples is None else known & set(samples)
    for name in asked - {t.sample for t in out}:  # samples without scans (e.g. all merged)
        out.append(SampleTotals(name, 0, 0, 0, 0, 0.0, 0, 0, 0, None, None))
    return sorted(out, key=lambda t: (t.sample is None, t.sample or ""))


@dataclass(frozen=True)
class VersionTotals:
    """One sample's done scans whose latest run came from one model version."""

    sample: str | None
    model_version: str
    counted: int  # done scans
    area_nm2: float
    trough: int
    peak: int
    scan_ids: tuple[int, ...]
    channel: str | None = None  # the scans' recorded channel (Z, Current, ...)


def sample_version_totals(
    *, session: Session, samples: Sequence[str] | None = None, instrument: str | None = None
) -> list[VersionTotals]:
    """Per sample, model version of the latest run and channel: done scans, area and counts
    (each sample's done scans split by the version that counted them and the channel they
    were recorded on: current maps are calibrated apart), sorted by sample, version, channel;
    with ``instrument``, that instrument's scans only."""
    latest = latest_runs()
    query = (
        select(
            Sample.name,
            DetectionRun.model_version,
            ScanRow.id,
            DetectionRun.area_nm2,
            DetectionRun.trough_count,
            DetectionRun.peak_count,
            ScanRow.channel,
        )
        .select_from(ScanRow)
        .outerjoin(Sample, Sample.id == ScanRow.sample_id)
        .join(latest, latest.c.scan_id == ScanRow.id)
        .join(DetectionRun, DetectionRun.id == latest.c.run_id)
        .where(ScanRow.status == "done")
    )
    if samples is not None:
        query = query.where(Sample.name.in_(list(samples)))
    if instrument is not None:
        query = query.where(ScanRow.instrument == instrument)
    groups: dict[tuple[str | None, str, str | None], list] = {}
    for name, version, scan_id, area, trough, peak, channel in session.execute(query):
        groups.setdefault((name, version, channel), []).append((scan_id, area, trough, peak))
    return [
        VersionTotals(
            name,
            version,
            len(rows),
            float(sum(r[1] or 0.0 for r in rows)),
            int(sum(r[2] or 0 for r in rows)),
            int(sum(r[3] or 0 for r in rows)),
            tuple(sorted(r[0] for r in rows)),
            channel,
        )
        for (name, version, channel), rows in sorted(
            groups.items(),
            key=lambda kv: (kv[0][0] is None, kv[0][0] or "", kv[0][1], kv[0][2] or ""),
        )
    ]


def list_scans(
    *,
    session: Session,
    sample: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    instrument: str | None = None,
) -> list[tuple[ScanRow, str | None, DetectionRun | None]]:
    """Scans (newest first) with their sample name and latest run (None if never run)."""
    latest = latest_runs()
    query = (
        select(ScanRow, Sample.name, DetectionRun)
        .outerjoin(Sample, Sample.id == ScanRow.sample_id)
        .outerjoin(latest, latest.c.scan_id == ScanRow.id)
        .outerjoin(DetectionRun, DetectionRun.id == latest.c.run_id)
        .order_by(ScanRow.id.desc())
    )
    if sample is not None:
        query = query.where(Sample.name == sample)
    if status is not None:
        query = query.where(ScanRow.status == status)
    if instrument is not None:
        query = query.where(ScanRow.instrument == instrument)
    if limit is not None:
        query = query.limit(limit)
    return [(s, n, r) for s, n, r in session.execute(query)]


def find_scans(ref: str, *, session: Session) -> list[ScanRow]:
    """Scans matching ``ref``: an id, a full path, or a file name (possibly several)."""
    if ref.isdigit():
        row = session.get(ScanRow, int(ref))
        if row is not None:
            return [row]
    exact = list(session.scalars(select(ScanRow).where(ScanRow.path == ref)))
    if exact:
        return exact
    name = PurePath(ref).name
    candidates = session.scalars(
        select(ScanRow).where(ScanRow.path.endswith(name, autoescape=True)).order_by(ScanRow.id)
    )
    return [
        r for r in candidates if name in (PurePosixPath(r.path).name, PureWindowsPath(r.path).name)
    ]


def latest_run(scan_id: int, *, session: Session) -> DetectionRun | None:
    """The scan's most recent detection run."""
    return session.scalar(
        select(DetectionRun)
        .where(DetectionRun.scan_id == scan_id)
        .order_by(DetectionRun.id.desc())
        .limit(1)
    )


def run_defects(run_id: int, *, session: Session) -> list[DefectRow]:
    """A run's defects in reading order (top to bottom, left to right)."""
    return list(
        session.scalars(
            select(DefectRow)
            .where(DefectRow.run_id == run_id)
            .order_by(DefectRow.row, DefectRow.col, DefectRow.id)
        )
    )


def status_counts(*, session: Session) -> dict[str, int]:
    """Scans per job status (every status present, 0 when none)."""
    counts = dict.fromkeys(("queued", "processing", "done", "failed"), 0)
    for status, n in session.execute(select(ScanRow.status, func.count()).group_by(ScanRow.status)):
        counts[status] = int(n)
    return counts


def last_processed(*, session: Session) -> tuple[ScanRow, DetectionRun] | None:
    """The scan whose detection run finished last, with that run."""
    row = session.execute(
        select(ScanRow, DetectionRun)
        .join(DetectionRun, DetectionRun.scan_id == ScanRow.id)
        .order_by(DetectionRun.finished_at.desc(), DetectionRun.id.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def recent_failures(*, session: Session, limit: int = 5) -> list[ScanRow]:
    """The most recently failed scans, newest first."""
    return list(
        session.scalars(
            select(ScanRow)
            .where(ScanRow.status == "failed")
            .order_by(ScanRow.updated_at.desc(), ScanRow.id.desc())
            .limit(limit)
        )
    )


def instrument_names(*, session: Session) -> list[str]:
    """Every instrument that recorded a scan, sorted."""
    return list(
        session.scalars(
            select(ScanRow.instrument)
            .where(ScanRow.instrument.is_not(None))
            .distinct()
            .order_by(ScanRow.instrument)
        )
    )
