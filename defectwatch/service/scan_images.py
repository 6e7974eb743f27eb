"""Use case: the pictures the web app shows, rendered once per detection run and kept on disk.

- ``scan``: the flattened scan at its own pixels (row 0 at the top), grey levels spread over
  the 0.5-99.5 percentiles, not-acquired rows black;
- ``thumb``: the same, at most ``THUMB_PX`` on its longer side;
- ``uncertainty``: the ensemble's member spread (the largest over the defect classes, 0-0.5
  in the 'inferno' map) at the scan's pixels, from running the run's own model version once
  more (seconds, on the first request only): the record keeps no maps.

Files are named by the run's id (``run-<id>-<kind>.png``; a scan without a run by its own id),
inside a folder that belongs to one database (``image_cache_dir``), written atomically, and
never derived from a request's path: the caller passes ids from the record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url

from defectwatch.db import browse
from defectwatch.db.engine import read_transaction
from defectwatch.db.registry import list_versions
from defectwatch.errors import DefectwatchError, NotFoundError
from defectwatch.service.config import cache_dir

log = logging.getLogger(__name__)

KINDS = ("scan", "thumb", "uncertainty")
THUMB_PX = 160
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def image_cache_dir(db_url: str) -> Path:
    """Where one database's pictures are kept: beside a SQLite file
    (``record.db`` -> ``record.db.images/``), else in the user's cache directory under a hash of
    the URL (password hidden)."""
    url = make_url(db_url)
    database = url.database or ""
    if (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
    ):
        p = Path(database).expanduser().resolve()
        return p.parent / f"{p.name}.images"
    key = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return cache_dir() / "web-images" / key


@dataclass(frozen=True)
class _Source:
    key: str  # run-<id> or scan-<id>
    path: str
    channel: str | None
    width_nm: float | None
    height_nm: float | None
    model_version: str | None


def _source(engine: Engine, scan_id: int) -> _Source:
    with read_transaction(engine) as session:
        found = browse.scan_with_run(scan_id, session=session)
        if found is None:
            raise NotFoundError(f"no scan {scan_id} in the database")
        s, run = found.scan, found.run
        key = f"run-{run.id}" if run is not None else f"scan-{s.id}"
        return _Source(
            key,
            s.path,
            s.channel,
            s.width_nm,
            s.height_nm,
            run.model_version if run is not None else None,
        )


def scan_image(engine: Engine, scan_id: int, kind: str, *, folder: Path) -> Path:
    """The PNG of ``kind`` for the scan's latest run, rendered now if not yet on disk.

    NotFoundError for an unknown scan or kind, or when the scan's file cannot be read any
    more (moved or deleted: the message says where it was); ModelLoadError when the run's
    model version is not in the registry (uncertainty only).
    """
    if kind not in KINDS:
        raise NotFoundError(f"no picture {kind!r} (one of {', '.join(KINDS)})")
    src = _source(engine, scan_id)
    target = folder / f"{src.key}-{kind}.png"
    if target.is_file():
        return target
    with _lock(str(target)):
        if target.is_file():  # rendered by another request meanwhile
            return target
        png = _render(engine, src, kind)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(png)
        os.replace(tmp, target)
        log.info("rendered %s for scan %d (%s)", target.name, scan_id, src.path)
    return target


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _read(src: _Source):  # type: ignore[no-untyped-def]
    from defectwatch.service.retraining import read_recorded_scan

    try:
        return read_recorded_scan(
            src.path, channel=src.channel, width_nm=src.width_nm, height_nm=src.height_nm
        )
    except (DefectwatchError, OSError) as exc:
        raise NotFoundError(f"the scan's file cannot be read any more ({exc})") from None


def _render(engine: Engine, src: _Source, kind: str) -> bytes:
    import cv2
    import numpy as np

    from defectwatch.pipeline.preprocess import flatten_with, to_unit_range
    from defectwatch.pipeline.render import to_grey8

    scan = _read(src)
    if kind == "uncertainty":
        return _uncertainty_png(engine, src, scan)
    flat = flatten_with(scan.data)
    grey = to_grey8(to_unit_range(flat, percentiles=(0.5, 99.5), fill=0.0))
    grey[~np.isfinite(flat)] = 0
    if kind == "thumb":
        h, w = grey.shape
        f = THUMB_PX / max(h, w)
        if f < 1:
            grey = cv2.resize(
                grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
            )
    ok, buf = cv2.imencode(".png", grey)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def _uncertainty_png(engine: Engine, src: _Source, scan) -> bytes:  # type: ignore[no-untyped-def]
    import cv2
    import numpy as np

    from defectwatch.service.detection import load_ensemble

    with read_transaction(engine) as session:
        directory = next(
            (v.directory for v in list_versions(session=session) if v.name == src.model_version),
            None,
        )
    if directory is None:  # `process` with the shipped default records runs without registering it
        from defectwatch.service.detection import default_model_dir
        from defectwatch.service.ingest import model_version_name

        shipped = default_model_dir()
        if model_version_name(shipped) == src.model_version:
            directory = str(shipped)
    if directory is None:
        raise NotFoundError(
            f"the run's model version {src.model_version!r} is not in the "
            "registry (recorded by `process --model DIR`?): its uncertainty "
            "map cannot be computed here"
        )
    prediction = load_ensemble(directory).predict_scan(scan)
    rows = [i for i, c in enumerate(prediction.classes) if c != "background"]
    spread = prediction.spread[rows].max(axis=0)
    grey = np.clip(spread / 0.5 * 255, 0, 255).astype(np.uint8)
    grey[~prediction.valid] = 0
    bgr = cv2.applyColorMap(
        cv2.resize(grey, (scan.nx, scan.ny), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_INFERNO
    )
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()
