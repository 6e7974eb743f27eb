"""Pictures people look at: a scan with its defects marked, beside its uncertainty map."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from defectwatch.domain import Defect
from defectwatch.pipeline.inference import Prediction
from defectwatch.pipeline.render import Mark, draw_marks, put_label, side_by_side, write_png


def uncertainty_panel(
    prediction: Prediction, *, size_px: tuple[int, int], title: str
) -> np.ndarray:
    """BGR picture of the largest member spread over the defect classes (0 to 0.5 -> dark
    to bright in the 'inferno' map), sized like the marked panel."""
    defect_rows = [i for i, c in enumerate(prediction.classes) if c != "background"]
    spread = prediction.spread[defect_rows].max(axis=0)
    grey = np.clip(spread / 0.5 * 255, 0, 255).astype(np.uint8)
    grey[~prediction.valid] = 0
    h, w = size_px
    bgr = cv2.applyColorMap(
        cv2.resize(grey, (w, h), interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_INFERNO
    )
    put_label(bgr, title, (10, 24))
    return bgr


def overlay_picture(prediction: Prediction, defects: Sequence[Defect], *, title: str) -> np.ndarray:
    """The flattened scan (model pixels) with troughs (cyan) and peaks (magenta) circled,
    beside the ensemble's uncertainty map."""
    rows = np.array([d.row for d in defects], float)
    cols = np.array([d.col for d in defects], float)
    r, c = prediction.mapping.to_resampled(rows, cols)
    marks = [Mark(float(a), float(b), d.kind) for a, b, d in zip(r, c, defects)]
    px = prediction.pixel_nm[0]
    n_t = sum(d.kind == "trough" for d in defects)
    n_p = sum(d.kind == "peak" for d in defects)
    left = draw_marks(
        prediction.image01,
        marks,
        pixel_size_nm=px,
        radius_nm=1.0,
        title=f"{title}: {n_t} troughs (cyan), {n_p} peaks (magenta)",
    )
    right = uncertainty_panel(
        prediction, size_px=left.shape[:2], title="ensemble spread (std of members), 0-0.5"
    )
    return side_by_side([left, right])


def write_overlay(
    path: str | os.PathLike[str], prediction: Prediction, defects: Sequence[Defect], *, title: str
) -> None:
    write_png(path, overlay_picture(prediction, defects, title=title))
