"""Ensemble probability maps -> defects: threshold, connected components, weighted centroids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from defectwatch.domain import Defect

DEFAULT_CLASSES = ("background", "trough", "peak")


def find_defects(mean_probs: np.ndarray, spread: np.ndarray, *,
                 pixel_size_nm: tuple[float, float], threshold: float = 0.5,
                 min_area_px: int = 2, classes: Sequence[str] = DEFAULT_CLASSES,
                 valid: np.ndarray | None = None, split_distance_px: float = 0.0,
                 split_prominence: float = 0.1) -> list[Defect]:
    """Defects of every non-background class, sorted by confidence (highest first).

    ``mean_probs`` and ``spread``: (C, H, W) mean class probabilities and member standard
    deviations; ``pixel_size_nm``: (x, y); ``valid``: (H, W) or (H,) bool, False where nothing
    was acquired: no defect is reported whose centroid lies there. ``split_distance_px`` > 0:
    a blob holding several probability maxima at least that far apart, each rising
    ``split_prominence`` above the saddle between them, is split by a watershed (neighbouring
    defects whose discs touch are counted apart).
    """
    mean_probs = np.asarray(mean_probs, dtype=np.float32)
    spread = np.asarray(spread, dtype=np.float32)
    if mean_probs.ndim != 3 or spread.shape != mean_probs.shape:
        raise ValueError(f"expected (C, H, W) maps of one shape, got {mean_probs.shape} and "
                         f"{spread.shape}")
    if len(classes) != mean_probs.shape[0]:
        raise ValueError(f"{len(classes)} class names for {mean_probs.shape[0]} channels")
    _, h, w = mean_probs.shape
    if valid is None:
        valid2d = np.ones((h, w), dtype=bool)
    else:
        valid2d = np.asarray(valid, dtype=bool)
        if valid2d.ndim == 1:
            valid2d = np.repeat(valid2d[:, None], w, axis=1)
    px, py = pixel_size_nm
    found: list[Defect] = []
    for c, kind in enumerate(classes):
        if kind == "background":
            continue
        prob = mean_probs[c]
        labels, n = ndimage.label(prob >= threshold)
        if n == 0:
            continue
        if split_distance_px > 0:
            labels, n = _split_touching(prob, labels, distance_px=split_distance_px,
                                        prominence=split_prominence)
        index = np.arange(1, n + 1)
        area = ndimage.sum_labels(np.ones_like(prob), labels, index)
        centres = ndimage.center_of_mass(prob, labels, index)
        conf = ndimage.mean(prob, labels, index)
        unc = ndimage.mean(spread[c], labels, index)
        for (row, col), a, p, u in zip(centres, area, conf, unc):
            if a < min_area_px:
                continue
            r, k = int(round(row)), int(round(col))
            if not valid2d[min(max(r, 0), h - 1), min(max(k, 0), w - 1)]:
                continue
            found.append(Defect(float(row), float(col), float((col + 0.5) * px),
                                float((row + 0.5) * py), kind, float(p), float(u),
                                float(a * px * py)))
    found.sort(key=lambda d: -d.confidence)
    return found


def _split_touching(prob: np.ndarray, labels: np.ndarray, *, distance_px: float,
                    prominence: float) -> tuple[np.ndarray, int]:
    """Watershed of ``-prob`` inside the thresholded blobs from prominent maxima."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = labels > 0
    smooth = ndimage.gaussian_filter(prob, sigma=1.0)
    peaks = h_maxima(np.where(mask, smooth, 0.0), prominence) & mask
    markers, n_peaks = ndimage.label(peaks)
    if n_peaks == 0:
        return labels, int(labels.max())
    # maxima closer than distance_px belong to one defect: merge their markers
    grown = ndimage.binary_dilation(peaks, iterations=max(1, int(round(distance_px / 2))))
    markers, n_peaks = ndimage.label(grown & mask)
    split = watershed(-smooth, markers, mask=mask)
    # blobs that held no marker keep their own label, after the split ones
    lost = mask & (split == 0)
    if lost.any():
        extra, n_extra = ndimage.label(lost)
        split[lost] = extra[lost] + n_peaks
        n_peaks += n_extra
    return split, int(n_peaks)
