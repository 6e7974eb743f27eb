"""Writing the record: samples, scan metadata, detection runs and their defects.

Every function takes ``session`` as a keyword and never commits: the caller owns the
transaction (``defectwatch.db.engine.write_transaction``).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from defectwatch.db.models import DefectRow, DetectionRun, Sample, ScanRow, utcnow
from defectwatch.domain import Detection, Scan
from defectwatch.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)


def get_or_create_sample(name: str, *, session: Session) -> Sample:
    """The sample called ``name``, created when new (safe against a concurrent creator)."""
    name = name.strip()
    if not name:
        raise ConfigError("sample name is empty")
    found = session.scalar(select(Sample).where(Sample.name == name))
    if found is not None:
        return found
    try:
        with session.begin_nested():
            sample = Sample(name=name)
            session.add(sample)
    except IntegrityError:  # created by another process between our select and insert
        sample = session.scalars(select(Sample).where(Sample.name == name)).one()
    return sample


def rename_sample(old: str, new: str, *, session: Session) -> str:
    """Rename sample ``old`` to ``new``; when ``new`` exists its scans are merged into it.

    Returns ``"renamed"``, ``"merged"`` or ``"unchanged"``; NotFoundError when ``old`` is unknown.
    """
    new = new.strip()
    if not new:
        raise ConfigError("the new sample name is empty")
    source = session.scalar(select(Sample).where(Sample.name == old))
    if source is None:
        raise NotFoundError(f"no sample called {old!r} (see `defectwatch samples`)")
    if old == new:
        return "unchanged"
    target = session.scalar(select(Sample).where(Sample.name == new))
    if target is None:
        source.name = new
        session.flush()
        return "renamed"
    session.execute(
        update(ScanRow)
        .where(ScanRow.sample_id == source.id)
        .values(sample_id=target.id, updated_at=utcnow())
    )
    session.delete(source)
    session.flush()
    return "merged"


def scan_by_sha256(sha256: str, *, session: Session) -> ScanRow | None:
    """The scan with this content hash, if recorded."""
    return session.scalar(select(ScanRow).where(ScanRow.sha256 == sha256))


def add_scan(
    path: str,
    *,
    session: Session,
    sha256: str,
    size_bytes: int,
    mtime_ns: int,
    sample: str | None,
    status: str = "processing",
    instrument: str | None = None,
) -> ScanRow:
    """A new scan row (outside the queue, e.g. for ``defectwatch process``)."""
    row = ScanRow(
        path=path,
        sha256=sha256,
        size_bytes=size_bytes,
        mtime_ns=mtime_ns,
        sample=get_or_create_sample(sample, session=session) if sample else None,
        status=status,
        attempts=0,
        instrument=instrument,
    )
    session.add(row)
    session.flush()
    return row


def set_scan_metadata(row: ScanRow, scan: Scan) -> None:
    """Copy what the file's header says (``inspect``'s fields) onto its scan row."""
    row.recorded_at = scan.recorded_at.replace(tzinfo=None) if scan.recorded_at else None
    row.channel = scan.channel
    row.nx, row.ny = scan.nx, scan.ny
    row.width_nm, row.height_nm = scan.width_nm, scan.height_nm
    row.pixel_size_x_nm, row.pixel_size_y_nm = scan.pixel_size_x_nm, scan.pixel_size_y_nm
    row.angle_deg = scan.angle_deg
    row.bias_v, row.setpoint_a = scan.bias_v, scan.setpoint_a
    row.constant_height = scan.constant_height
    row.temperature_k = scan.temperature_k
    row.acquired_fraction = scan.acquired_fraction
    row.acquired_area_nm2 = scan.acquired_area_nm2
    row.scan_dir = scan.scan_dir
    row.comment = scan.comment


def add_detection_run(
    scan_id: int, detection: Detection, *, session: Session, finished_at: datetime | None = None
) -> DetectionRun:
    """Record one detection run of a scan and all its defects."""
    kinds = [d.kind for d in detection.defects]
    run = DetectionRun(
        scan_id=scan_id,
        model_version=detection.model_version,
        started_at=detection.started_at,
        finished_at=finished_at or utcnow(),
        seconds=float(detection.seconds),
        area_nm2=float(detection.area_nm2),
        trough_count=kinds.count("trough"),
        peak_count=kinds.count("peak"),
        defect_count=len(kinds),
        uncertainty_sum=float(sum(d.uncertainty for d in detection.defects)),
        near_threshold_nm2=(
            None if detection.near_threshold_nm2 is None else float(detection.near_threshold_nm2)
        ),
    )
    session.add(run)
    session.flush()
    if detection.defects:
        session.execute(
            insert(DefectRow),
            [
                {
                    "run_id": run.id,
                    "row": float(d.row),
                    "col": float(d.col),
                    "x_nm": float(d.x_nm),
                    "y_nm": float(d.y_nm),
                    "kind": d.kind,
                    "confidence": float(d.confidence),
                    "uncertainty": float(d.uncertainty),
                    "area_nm2": float(d.area_nm2),
                    "contrast": float(d.contrast) if math.isfinite(d.contrast) else None,
                }
                for d in detection.defects
            ],
        )
    return run


def add_run_unless_scored(
    sha256: str, detection: Detection, *, version: str, session: Session
) -> bool:
    """Record ``detection`` as the latest run of the scan with this content, unless its latest
    run is already by ``version`` (then nothing: a re-score is recorded exactly once per
    (sha256, version), whoever computes it and however often). The scan row is locked first
    (``FOR UPDATE`` on servers; SQLite's write transaction already holds the file), so two
    writers of the same scan take turns. A failed scan that now has a run becomes ``done``.
    True when recorded; NotFoundError when the scan is no longer in the record."""
    row = session.scalar(select(ScanRow).where(ScanRow.sha256 == sha256).with_for_update())
    if row is None:
        raise NotFoundError(f"no scan with sha256 {sha256[:12]}... in the record any more")
    latest = session.scalar(
        select(DetectionRun.model_version)
        .where(DetectionRun.scan_id == row.id)
        .order_by(DetectionRun.id.desc())
        .limit(1)
    )
    if latest == version:
        return False
    add_detection_run(row.id, detection, session=session)
    if row.status == "failed":
        row.status, row.last_error = "done", None
    return True
