"""How strongly a point defect stands out in an image: the statistic annotators judge by eye.

``contrast = (mean of the lattice-smoothed core - mean of a surrounding ring) / ring pixel std``

Measured this way on the paper's real 8-bit renders (``../shared/fixtures/real-wse2``, 403
labels) the labelled troughs have a median of -3.3 (10th percentile -1.8) and the labelled
peaks +2.2 (10th percentile +1.0): what annotators mark. The simulator uses the same measure to
decide which of its defects a labeller would have marked (`simulate.TruthDefect.visible`).

A model version REPORTS defects by a rule of its own (``ModelConfig.report_contrast``). Versions
`default-sim-5d` to `default-sim-7` (before issue 15) reported peaks from +2.0, a rule chosen on
the 15 labelled real frames; since issue 15 the rule is chosen with the threshold on simulated
validation scans only (`benchmarks/operating_points.py`: troughs from -1.25, peaks from +1.0),
so the real frames stay a clean test set. Versions older than the rule report by the
labeller's rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

LATTICE_SMOOTH_NM = 0.33  # gaussian sigma that averages the Se lattice out of the core
CORE_RADIUS_NM = 0.5
RING_INNER_NM = 1.8  # at least; grown with the defect's own radius so the ring stays outside it
RING_WIDTH_NM = 1.0
# weakest contrast a labeller marks: 4% of the real labelled troughs and 11% of the peaks are
# fainter than these
TROUGH_MARKED = -1.5
PEAK_MARKED = 1.0
LABELLER = {"trough": TROUGH_MARKED, "peak": PEAK_MARKED}
# what a model version reports (`ModelConfig.report_contrast`): new versions / versions whose
# config predates the rule (they reported what a labeller marks)
REPORT_CONTRAST = {"trough": -1.25, "peak": 1.0}  # chosen on simulated validation (issue 15)
LEGACY_REPORT_CONTRAST = dict(LABELLER)


def marked(kind: str, contrast: float, limits: Mapping[str, float] | None = None) -> bool:
    """Does a defect of ``kind`` with this contrast pass ``limits``?

    Parameters
    ----------
    kind : {"trough", "peak"}
    contrast : float
        The defect's contrast (`defect_contrast`), ring-noise sigmas; NaN: not measured.
    limits : mapping of str to float, optional
        ``{kind: weakest contrast reported}`` (troughs negative); default `LABELLER`, what a
        labeller marks.

    Returns
    -------
    bool
        True when it stands out at least that far (troughs at or below their limit, peaks at
        or above theirs); True for NaN (unknown contrast is never held against a defect).
    """
    if not np.isfinite(contrast):
        return True
    limit = (limits or LABELLER)[kind]
    return contrast <= limit if kind == "trough" else contrast >= limit


def defect_contrast(
    flat: np.ndarray,
    *,
    pixel_size_nm: float,
    rows: Sequence[float] | np.ndarray,
    cols: Sequence[float] | np.ndarray,
    radius_nm: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """How far each point stands out of ``flat``, in noise sigmas of a ring around it.

    Parameters
    ----------
    flat : ndarray, shape (ny, nx)
        A flattened image (any units; NaN where nothing was acquired).
    pixel_size_nm : float
        Size of one pixel of ``flat``, nm.
    rows, cols : sequence of float or ndarray, shape (n,)
        The points, pixels of ``flat`` (row 0 = top).
    radius_nm : sequence of float or ndarray, shape (n,), optional
        Each defect's apparent radius, nm: the ring starts beyond 1.3 times it (and at least
        at `RING_INNER_NM`).

    Returns
    -------
    ndarray, shape (n,)
        float64 contrast: (mean of the lattice-smoothed core - mean of the ring) / ring
        pixel standard deviation; negative for troughs. NaN where the core or the ring falls
        off the frame or in unacquired lines.
    """
    valid = np.isfinite(flat)
    out = np.full(len(rows), np.nan)
    if not valid.any():
        return out
    fill = np.where(valid, flat, np.median(flat[valid])).astype(np.float32)
    smooth = cv2.GaussianBlur(fill, (0, 0), LATTICE_SMOOTH_NM / pixel_size_nm)
    ny, nx = flat.shape
    for i, (r, c) in enumerate(zip(rows, cols)):
        inner = max(RING_INNER_NM, 1.3 * (radius_nm[i] if radius_nm is not None else 0.0))
        outer = inner + RING_WIDTH_NM
        reach = int(np.ceil(outer / pixel_size_nm)) + 1
        r0, r1 = int(round(r)) - reach, int(round(r)) + reach + 1
        c0, c1 = int(round(c)) - reach, int(round(c)) + reach + 1
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, ny), min(c1, nx)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        dist = np.hypot(yy - r, xx - c) * pixel_size_nm
        ok = valid[r0:r1, c0:c1]
        core = smooth[r0:r1, c0:c1][(dist < CORE_RADIUS_NM) & ok]
        ring = fill[r0:r1, c0:c1][(dist > inner) & (dist < outer) & ok]
        if core.size == 0 or ring.size < 8:
            continue
        out[i] = (float(core.mean()) - float(ring.mean())) / (float(ring.std()) + 1e-30)
    return out
