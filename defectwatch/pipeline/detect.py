"""Ensemble probability maps -> defects: threshold, connected components, weighted centroids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from defectwatch.domain import CLASSES, Defect

DEFAULT_CLASSES = CLASSES


def find_defects(
    mean_probs: np.ndarray,
    spread: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    threshold: float = 0.5,
    min_area_px: int = 2,
    classes: Sequence[str] = DEFAULT_CLASSES,
    valid: np.ndarray | None = None,
) -> list[Defect]:
    """Defects of every non-background class, sorted by confidence (highest first).

    A defect is a connected region where the class's mean probability is at least
    ``threshold``; its position is the probability-weighted centroid.

    Parameters
    ----------
    mean_probs : ndarray, shape (C, H, W)
        Mean class probabilities of the ensemble (0-1), classes in the order of ``classes``.
    spread : ndarray, shape (C, H, W)
        The members' standard deviation of the same probabilities.
    pixel_size_nm : tuple of float
        ``(x, y)`` size of one pixel of the maps, nm.
    threshold : float, optional
        Mean-probability threshold, 0-1.
    min_area_px : int, optional
        Smaller regions are dropped (pixels of the maps).
    classes : sequence of str, optional
        Class names, ``"background"`` first (it is never reported).
    valid : ndarray, shape (H, W) or (H,), optional
        bool, False where nothing was acquired: no defect is reported whose centroid lies
        there.

    Returns
    -------
    list of Defect
        ``row, col`` in pixels of the maps (row 0 = top), ``x_nm, y_nm`` from the top-left
        corner, ``confidence`` (mean probability over the region), ``uncertainty`` (mean
        spread over it), ``area_nm2``; ``contrast`` is NaN (measured later, on the scan).
        Empty when nothing passes.

    Raises
    ------
    ValueError
        Maps of different shapes, or a class count that does not match ``C``.
    """
    mean_probs = np.asarray(mean_probs, dtype=np.float32)
    spread = np.asarray(spread, dtype=np.float32)
    if mean_probs.ndim != 3 or spread.shape != mean_probs.shape:
        raise ValueError(
            f"expected (C, H, W) maps of one shape, got {mean_probs.shape} and {spread.shape}"
        )
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
            found.append(
                Defect(
                    float(row),
                    float(col),
                    float((col + 0.5) * px),
                    float((row + 0.5) * py),
                    kind,
                    float(p),
                    float(u),
                    float(a * px * py),
                )
            )
    found.sort(key=lambda d: -d.confidence)
    return found


NEAR_THRESHOLD_BAND = 0.15  # mean probability within this of the threshold: "on the fence"


def near_threshold_area_nm2(
    mean_probs: np.ndarray,
    *,
    pixel_size_nm: tuple[float, float],
    threshold: float = 0.5,
    band: float = NEAR_THRESHOLD_BAND,
    classes: Sequence[str] = DEFAULT_CLASSES,
    valid: np.ndarray | None = None,
) -> float:
    """Area (nm^2) where the ensemble is on the fence: acquired pixels where some defect
    class's mean probability lies within ``band`` of ``threshold``.

    It grows with blurred, doubtful detections (their rims are wide) and with candidates the
    ensemble nearly reported (peaks just under the threshold), and stays small where it is
    sure (sharp defects, clear background).

    Parameters
    ----------
    mean_probs : ndarray, shape (C, H, W)
        The ensemble's mean class probabilities, classes in the order of ``classes``.
    pixel_size_nm : tuple of float
        (x, y) size of one map pixel, nm.
    threshold : float
        The version's detection threshold (probability).
    band : float
        Half-width of the band around ``threshold`` counted as doubtful (probability).
    classes : sequence of str
        Class names of the C maps; ``"background"`` is not counted.
    valid : ndarray of bool, shape (H, W) or (H,), optional
        Acquired pixels (or rows); None counts every pixel.

    Returns
    -------
    float
        Doubtful area, nm^2 (0.0 when there is no defect class).
    """
    mean_probs = np.asarray(mean_probs, dtype=np.float32)
    rows = [i for i, c in enumerate(classes) if c != "background"]
    if not rows or mean_probs.ndim != 3:
        return 0.0
    near = (np.abs(mean_probs[rows] - threshold) <= band).any(axis=0)
    if valid is not None:
        valid2d = np.asarray(valid, dtype=bool)
        if valid2d.ndim == 1:
            valid2d = np.repeat(valid2d[:, None], near.shape[1], axis=1)
        near &= valid2d
    return float(near.sum()) * float(pixel_size_nm[0]) * float(pixel_size_nm[1])
