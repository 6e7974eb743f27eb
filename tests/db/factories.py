"""Test data for the record: a settable clock, detections, scans with runs."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from defectwatch.db import write_transaction
from defectwatch.db.records import add_detection_run, add_scan
from defectwatch.domain import Defect, Detection


class Clock:
    """A settable UTC clock for queue tests (no sleeping)."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def detection(troughs: int, peaks: int, area_nm2: float, *, version: str = "v1") -> Detection:
    """A Detection with ``troughs`` + ``peaks`` defects on a diagonal."""
    defects = tuple(
        Defect(
            row=float(i),
            col=float(i),
            x_nm=i * 0.1,
            y_nm=i * 0.1,
            kind="trough" if i < troughs else "peak",
            confidence=0.9,
            uncertainty=0.05,
            area_nm2=1.5,
            contrast=math.nan if i == 0 else (-3.0 if i < troughs else 2.5),
        )
        for i in range(troughs + peaks)
    )
    return Detection(
        model_version=version,
        defects=defects,
        densities={},
        area_nm2=area_nm2,
        started_at=datetime.now(UTC),
        seconds=0.5,
    )


def record(
    engine: Engine, path: str, *, sample: str | None, runs: list[Detection], status: str = "done"
) -> int:
    """A scan row with these detection runs (oldest first); returns the scan id."""
    with write_transaction(engine) as s:
        row = add_scan(
            path,
            session=s,
            sha256=sha(path),
            size_bytes=100,
            mtime_ns=1,
            sample=sample,
            status=status,
        )
        for det in runs:
            add_detection_run(row.id, det, session=s)
        return row.id
