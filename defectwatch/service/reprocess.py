"""Use case: re-score recorded scans with the active model version, keeping the history.

Each scan re-scored gets a new ``detection_run`` (its earlier runs stay; queries count every
scan through its latest run), so density trends can be recomputed with one version throughout.
Only ``.sxm`` scans whose file is still there with the same content are re-scored; rendered
images recorded for labels (no run) and vanished or rewritten files are reported as skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from defectwatch.db import queries as q
from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.domain import Detection, Scan
from defectwatch.errors import DefectwatchError, NotFoundError
from defectwatch.service.ingest import file_sha256, record_detection

log = logging.getLogger(__name__)

SCAN_SUFFIX = ".sxm"

Load = Callable[[Path], Any]
Detect = Callable[..., "tuple[Scan, Detection]"]  # detect(path, *, ensemble, channel)


@dataclass(frozen=True)
class Candidate:
    """A recorded scan that may be re-scored."""

    scan_id: int
    path: str
    sha256: str
    channel: str
    model_version: str  # of its latest run


@dataclass(frozen=True)
class Rescored:
    scan_id: int
    path: str
    previous_version: str
    defects: int
    run_id: int


@dataclass(frozen=True)
class ReprocessResult:
    """What ``reprocess`` did with the active ``model_version``."""

    model_version: str
    rescored: tuple[Rescored, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, why)
    considered: int  # scans with a detection run that matched the filters


def _load(directory: Path) -> Any:
    from defectwatch.service.detection import load_ensemble

    return load_ensemble(directory)


def _detect(path: str, *, ensemble: Any, channel: str) -> tuple[Scan, Detection]:
    from defectwatch.service.detection import detect_file

    return detect_file(path, ensemble=ensemble, channel=channel)


def candidates(
    engine: Engine, *, sample: str | None = None, outdated_for: str | None = None
) -> list[Candidate]:
    """Done scans with a detection run (oldest first), of ``sample`` or all; with
    ``outdated_for``, only those whose latest run used another version."""
    with read_transaction(engine) as session:
        if sample is not None and sample not in q.sample_names(session=session):
            raise NotFoundError(f"no sample called {sample!r} (see `defectwatch samples`)")
        rows = q.list_scans(session=session, sample=sample, status="done")
    out = [
        Candidate(s.id, s.path, s.sha256, s.channel or "Z", run.model_version)
        for s, _, run in reversed(rows)
        if run is not None
    ]
    if outdated_for is not None:
        out = [c for c in out if c.model_version != outdated_for]
    return out


def _why_not(c: Candidate) -> str | None:
    """Why this scan cannot be re-scored (None when it can)."""
    from defectwatch.pipeline.scan_names import is_scan_name

    if not is_scan_name(c.path):
        return "not a scan file (rendered images are recorded for labels only)"
    if not os.path.isfile(c.path):
        return "the file is no longer there"
    try:
        if file_sha256(c.path) != c.sha256:
            return (
                "the file's content changed since it was recorded (a new scan: record it "
                "with `defectwatch process`)"
            )
    except OSError as exc:
        return f"cannot read the file ({exc.strerror})"
    return None


def reprocess(
    engine: Engine,
    *,
    sample: str | None = None,
    outdated: bool = False,
    channel: str | None = None,
    load: Load = _load,
    detect: Detect = _detect,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReprocessResult:
    """Re-score the recorded scans (of ``sample``; with ``outdated``, only those last scored
    by another version) with the active version; one write transaction per scan.
    ``channel``: analyse this channel instead of the one each scan was recorded with.
    ModelLoadError when the active version does not load (nothing is re-scored)."""
    from defectwatch.service.model_versions import resolve_model

    chosen = resolve_model(engine)
    name, directory = chosen.name, chosen.directory
    todo = candidates(engine, sample=sample, outdated_for=name if outdated else None)
    ensemble = load(directory) if todo else None
    rescored: list[Rescored] = []
    skipped: list[tuple[str, str]] = []
    for i, c in enumerate(todo):
        why = _why_not(c)
        if why is None:
            try:
                scan, detection = detect(c.path, ensemble=ensemble, channel=channel or c.channel)
            except DefectwatchError as exc:
                why = str(exc)
            else:
                with write_transaction(engine) as session:
                    run_id = record_detection(
                        scan, detection, session=session, sha256=c.sha256, path=c.path
                    )
                rescored.append(
                    Rescored(c.scan_id, c.path, c.model_version, len(detection.defects), run_id)
                )
                log.info(
                    "%s: re-scored with %s (%d defects; was %s)",
                    Path(c.path).name,
                    name,
                    len(detection.defects),
                    c.model_version,
                )
        if why is not None:
            skipped.append((c.path, why))
            log.warning("%s: not re-scored: %s", c.path, why)
        if on_progress is not None:
            on_progress(i + 1, len(todo))
    return ReprocessResult(name, tuple(rescored), tuple(skipped), len(todo))
