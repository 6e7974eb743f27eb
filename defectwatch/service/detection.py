"""One scan file -> its defects and densities, with a resident ensemble (no database here).

The composition the daemon, ``process`` and ``evaluate`` share: read the scan, run the
ensemble, find defects, compute densities over the acquired area.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from defectwatch.domain import Detection, Scan
from defectwatch.errors import ModelLoadError
from defectwatch.models import DEFAULT_VERSION, default_model_dir
from defectwatch.pipeline.density import densities
from defectwatch.pipeline.detect import near_threshold_area_nm2
from defectwatch.pipeline.inference import Ensemble, Prediction
from defectwatch.pipeline.scan import read_scan
from defectwatch.service.config import cache_dir, get_settings

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5

__all__ = [
    "DEFAULT_VERSION",
    "DetectedScan",
    "default_model_dir",
    "detect_file",
    "detect_scan",
    "load_ensemble",
]


@dataclass(frozen=True)
class DetectedScan:
    """A scan, the ensemble's maps for it and what was recorded from them."""

    scan: Scan
    prediction: Prediction
    detection: Detection


@functools.lru_cache(maxsize=4)
def _cached(
    directory: str, device: str, fast: bool, cpu_bf16: bool | None, cpu_onnx: bool
) -> Ensemble:
    # on CPU, members run side by side (one per core, at most 4): measured faster than
    # splitting each member's small convolutions across cores (see `make bench`)
    side = max(1, min(os.cpu_count() or 1, 4))
    return Ensemble.load(
        directory,
        device=device,
        fast=fast,
        side_by_side=side,
        onnx_cache_dir=cache_dir() / "onnx",
        cpu_bf16=cpu_bf16,
        cpu_onnx=cpu_onnx,
    )


def load_ensemble(
    directory: str | os.PathLike[str] | None = None, *, device: str = "auto", fast: bool = False
) -> Ensemble:
    """The ensemble of a version directory (the shipped default when None), loaded once per
    process and kept resident."""
    path = Path(directory) if directory is not None else default_model_dir()
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model version directory")
    settings = get_settings()
    return _cached(
        str(path.resolve()), device, fast, settings.cpu_bf16 if fast else None, settings.cpu_onnx
    )


def detect_scan(scan: Scan, *, ensemble: Ensemble, threshold: float | None = None) -> DetectedScan:
    """Run the ensemble on an already-read scan."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    prediction = ensemble.predict_scan(scan)
    thr = (
        threshold
        if threshold is not None
        else ensemble.config.threshold_for(scan.channel, DEFAULT_THRESHOLD)
    )
    defects = tuple(prediction.defects(threshold=thr))
    area = scan.acquired_area_nm2
    dens = densities(defects, area)
    near = near_threshold_area_nm2(
        prediction.mean,
        pixel_size_nm=prediction.pixel_nm,
        threshold=thr,
        classes=prediction.classes,
        valid=prediction.valid,
    )
    detection = Detection(
        model_version=ensemble.version,
        defects=defects,
        densities=dens,
        area_nm2=area,
        started_at=started,
        seconds=time.perf_counter() - t0,
        near_threshold_nm2=near,
    )
    return DetectedScan(scan, prediction, detection)


def detect_file(
    path: str | os.PathLike[str],
    *,
    ensemble: Ensemble,
    channel: str = "Z",
    threshold: float | None = None,
) -> tuple[Scan, Detection]:
    """Read one .sxm file and detect its defects -> (scan, detection).

    Raises ScanIncompleteError for a file still being written, ScanReadError for one that
    cannot be read (the caller decides: retry, fail, report).
    """
    t0 = time.perf_counter()
    scan = read_scan(path, channel=channel)
    result = detect_scan(scan, ensemble=ensemble, threshold=threshold)
    d = result.detection
    detection = dataclasses.replace(d, seconds=time.perf_counter() - t0)
    return scan, detection
