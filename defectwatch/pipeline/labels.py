"""Point labels -> training masks: a filled circle per defect, as in the paper.

Mask values: 0 background, 1 trough, 2 peak (the class index), ``IGNORE`` where the loss must
not look (defects too faint to see, lines never acquired, padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IGNORE = 255
CLASS_INDEX = {"trough": 1, "peak": 2}
DEFAULT_RADIUS_NM = {"trough": 0.6, "peak": 0.7}


def circle_mask(
    shape: tuple[int, int],
    rows: Sequence[float] | np.ndarray,
    cols: Sequence[float] | np.ndarray,
    kinds: Sequence[str],
    *,
    radius_px: Sequence[float] | np.ndarray | float,
    ignore: Sequence[bool] | None = None,
    ignore_scale: float = 1.5,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """A training mask with a filled circle per point.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the mask, pixels.
    rows, cols : sequence of float or ndarray, shape (n,)
        Point centres, float pixels (row 0 = top).
    kinds : sequence of str, length n
        ``"trough"`` or ``"peak"`` per point.
    radius_px : float or sequence of float, shape (n,)
        Disc radius, pixels: one per point or one for all.
    ignore : sequence of bool, shape (n,), optional
        True for points the model must not be taught either way: their disc, ``ignore_scale``
        times larger, becomes `IGNORE`. Drawn first, so they never hide a defect.
    ignore_scale : float, optional
    base : ndarray, shape (H, W), optional
        A mask to draw on (e.g. `IGNORE` rows); copied, never changed.

    Returns
    -------
    ndarray, shape (H, W)
        uint8: 0 background, 1 trough, 2 peak (`CLASS_INDEX`), `IGNORE` (255).

    Raises
    ------
    ValueError
        An unknown kind.
    """
    mask = np.zeros(shape, np.uint8) if base is None else base.astype(np.uint8, copy=True)
    n = len(rows)
    radii = np.broadcast_to(np.asarray(radius_px, dtype=float), (n,))
    flags = np.zeros(n, bool) if ignore is None else np.asarray(ignore, dtype=bool)
    shift = 4  # sub-pixel centres for cv2.circle
    for i in np.argsort(~flags, kind="stable"):  # ignored discs first: never hide a defect
        r, c, kind, rad, ign = rows[i], cols[i], kinds[i], radii[i], flags[i]
        if kind not in CLASS_INDEX:
            raise ValueError(f"unknown defect kind {kind!r}; expected one of {sorted(CLASS_INDEX)}")
        value = IGNORE if ign else CLASS_INDEX[kind]
        rr = rad * (ignore_scale if ign else 1.0)
        centre = (int(round(c * (1 << shift))), int(round(r * (1 << shift))))
        cv2.circle(
            mask,
            centre,
            max(1, int(round(rr * (1 << shift)))),
            int(value),
            thickness=-1,
            lineType=cv2.LINE_8,
            shift=shift,
        )
    return mask
