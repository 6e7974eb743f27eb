"""Use cases: a person's review of a scan's detections, and which scans to review first.

A review is the reviewed set of defects of one scan: the detections kept (kind possibly
switched), minus those rejected, plus those added. ``save_review`` stores it as the scan's
label set with the source ``reviewed`` (exhaustive unless the reviewer says the review is
partial), replacing that scan's earlier review and never another source's labels. For training
a scan's review supersedes its other label sets (``db.splits.reviewed_sets``).

The review queue ranks done, unreviewed scans by how much the ensemble doubts its own answer on
them (``db.browse.review_score``): 2 x the summed member spread of the latest run's defects (a
detection the members disagree on completely, spread 0.5, counts 1) plus the run's
near-threshold area (pixels where a defect class's mean probability was within 0.15 of the
threshold) in units of one defect footprint (1 nm^2). Both terms count, roughly, defects the
ensemble is unsure about: the doubtful detections (which a review confirms or rejects) and the
near misses (which a review adds), which is where a label teaches a model most.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from defectwatch.db import browse
from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.db.labels import KINDS, REVIEWED, replace_labels
from defectwatch.errors import ConfigError, NotFoundError
from defectwatch.pipeline.label_formats import PointLabel
from defectwatch.service.browse import scan_summary

log = logging.getLogger(__name__)

MAX_DEFECTS = 100_000  # more than any scan holds; keeps a request's size bounded


def parse_review(payload: Any) -> tuple[list[tuple[float, float, str]], bool]:
    """The ``POST /api/scans/{id}/review`` body -> ([(row, col, kind)...], exhaustive);
    ConfigError naming what is wrong."""
    if not isinstance(payload, Mapping):
        raise ConfigError('the review must be a JSON object {"defects": [...], "exhaustive": true}')
    items = payload.get("defects")
    if not isinstance(items, list):
        raise ConfigError('"defects" must be a list of {"row", "col", "kind"} objects')
    if len(items) > MAX_DEFECTS:
        raise ConfigError(f"{len(items)} defects: at most {MAX_DEFECTS} per review")
    exhaustive = payload.get("exhaustive", True)
    if not isinstance(exhaustive, bool):
        raise ConfigError('"exhaustive" must be true or false')
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"defects[{i}] is not an object with row, col and kind")
        row, col, kind = item.get("row"), item.get("col"), item.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"defects[{i}]: kind {kind!r} is not {' or '.join(KINDS)}")
        for name, v in (("row", row), ("col", col)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"defects[{i}]: {name} {v!r} is not a number of pixels")
        assert isinstance(row, (int, float)) and isinstance(col, (int, float))  # checked above
        out.append((float(row), float(col), str(kind)))
    return out, exhaustive


def save_review(
    engine: Engine,
    scan_id: int,
    defects: Sequence[tuple[float, float, str]],
    *,
    exhaustive: bool = True,
) -> dict[str, Any]:
    """Store the reviewed defects ``(row, col, kind)`` (the scan's pixels, row 0 at the top)
    as the scan's ``reviewed`` labels. NotFoundError for an unknown scan; ConfigError for a
    scan of unknown size or a position outside its frame."""
    with write_transaction(engine) as session:
        found = browse.scan_with_run(scan_id, session=session)
        if found is None:
            raise NotFoundError(f"no scan {scan_id} in the database")
        s = found.scan
        if not (s.nx and s.ny):
            raise ConfigError(
                f"scan {scan_id} has not been read yet (status {s.status}): its "
                "size is unknown, so it cannot be reviewed"
            )
        for row, col, _ in defects:
            if not (-0.5 <= row <= s.ny - 0.5 and -0.5 <= col <= s.nx - 0.5):
                raise ConfigError(
                    f"({row:g}, {col:g}) lies outside scan {scan_id}'s {s.ny} x {s.nx} pixels"
                )
        points = [PointLabel(str(scan_id), row, col, kind, None) for row, col, kind in defects]
        replaced = browse.review_of(scan_id, session=session) is not None
        replace_labels(scan_id, points, session=session, source=REVIEWED, exhaustive=exhaustive)
    counts = {k: sum(1 for _, _, kind in defects if kind == k) for k in KINDS}
    log.info(
        "scan %d: review saved, %s (%s)%s",
        scan_id,
        counts,
        "exhaustive" if exhaustive else "partial",
        ", replacing the earlier one" if replaced else "",
    )
    return {
        "scan_id": scan_id,
        "source": REVIEWED,
        "exhaustive": exhaustive,
        "counts": {**counts, "total": len(defects)},
        "replaced": replaced,
    }


def review_queue(engine: Engine, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Done scans not yet reviewed, highest review score first (see the module's doc)."""
    if not 1 <= limit <= 500 or offset < 0:
        raise ConfigError(
            f"limit {limit}, offset {offset}: use a limit of 1 to 500 and an offset of 0 or more"
        )
    with read_transaction(engine) as session:
        rows = browse.review_queue(session=session, limit=limit, offset=offset)
        unreviewed = browse.count_unreviewed(session=session)
        scans = []
        for found, score in rows:
            item = scan_summary(found)
            run = found.run
            assert run is not None
            item.update(
                {
                    "score": score,
                    "uncertainty_sum": run.uncertainty_sum,
                    "near_threshold_nm2": run.near_threshold_nm2,
                }
            )
            scans.append(item)
    return {"unreviewed": unreviewed, "limit": limit, "offset": offset, "scans": scans}
