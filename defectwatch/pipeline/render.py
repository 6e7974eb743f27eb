"""Pictures for people: a flattened scan as grey levels with defects marked (OpenCV, PNG).

Marks: troughs as cyan circles, peaks as magenta circles; points marked not visible (present in
the truth but below noise or on a step) are drawn thin and grey. A scale bar in nm sits in the
lower left corner.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

COLOURS_BGR = {"trough": (255, 200, 0), "peak": (220, 0, 255), "hidden": (140, 140, 140)}


@dataclass(frozen=True)
class Mark:
    """A point to draw: (row, col) in image pixels, its kind, and whether it is drawn bold."""

    row: float
    col: float
    kind: str
    bold: bool = True


def to_grey8(image01: np.ndarray) -> np.ndarray:
    """A [0, 1] image as 8-bit grey levels.

    Parameters
    ----------
    image01 : ndarray, shape (ny, nx)
        float in [0, 1] (clipped); NaN allowed.

    Returns
    -------
    ndarray, shape (ny, nx)
        uint8, 0-255; NaN shows as black (0).
    """
    img = np.nan_to_num(np.asarray(image01, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _nice_length(target_nm: float) -> float:
    exp = 10 ** np.floor(np.log10(target_nm))
    for m in (1, 2, 5, 10):
        if m * exp >= target_nm:
            return float(m * exp)
    return float(10 * exp)


def draw_marks(
    image01: np.ndarray,
    marks: Iterable[Mark],
    *,
    pixel_size_nm: float,
    radius_nm: float = 1.0,
    title: str | None = None,
    min_side_px: int = 768,
) -> np.ndarray:
    """A picture of an image with its points circled, a scale bar and a title.

    Parameters
    ----------
    image01 : ndarray, shape (ny, nx)
        float in [0, 1] (NaN black).
    marks : iterable of Mark
        ``(row, col)`` in pixels of ``image01``; troughs cyan, peaks magenta, not-bold grey.
    pixel_size_nm : float
        Size of one pixel of ``image01``, nm (for the circles and the scale bar).
    radius_nm : float, optional
        Circle radius, nm.
    title : str, optional
        Drawn at the top left.
    min_side_px : int, optional
        The picture is upscaled by a whole factor until its longer side reaches this.

    Returns
    -------
    ndarray, shape (ny * zoom, nx * zoom, 3)
        BGR uint8 (OpenCV's channel order).
    """
    grey = to_grey8(image01)
    ny, nx = grey.shape
    zoom = max(1, int(np.ceil(min_side_px / max(ny, nx))))
    bgr = cv2.cvtColor(
        cv2.resize(grey, (nx * zoom, ny * zoom), interpolation=cv2.INTER_NEAREST),
        cv2.COLOR_GRAY2BGR,
    )
    radius = max(3, int(round(radius_nm / pixel_size_nm * zoom)))
    for m in marks:
        centre = (int(round((m.col + 0.5) * zoom)), int(round((m.row + 0.5) * zoom)))
        colour = COLOURS_BGR.get(m.kind, (0, 255, 0)) if m.bold else COLOURS_BGR["hidden"]
        cv2.circle(bgr, centre, radius, colour, 2 if m.bold else 1, cv2.LINE_AA)
    # scale bar: about a fifth of the width
    bar_nm = _nice_length(nx * pixel_size_nm / 5)
    bar_px = int(round(bar_nm / pixel_size_nm * zoom))
    h, w = bgr.shape[:2]
    y = h - 20
    cv2.rectangle(bgr, (15, y - 6), (15 + bar_px, y), (255, 255, 255), -1)
    put_label(bgr, f"{bar_nm:g} nm", (15, y - 12))
    if title:
        put_label(bgr, title, (10, 24))
    return bgr


def put_label(bgr: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    """White text outlined in black, readable on any grey level, drawn in place.

    The outline is the same thin text shifted by one pixel all round: OpenCV advances each
    glyph by the stroke thickness, so a thick outline under thin text drifts apart along a
    line and doubles the words.

    Parameters
    ----------
    bgr : ndarray, shape (H, W, 3)
        uint8 picture, changed in place.
    text : str
    origin : tuple of int
        ``(x, y)`` of the text's baseline start, pixels.
    """
    x, y = origin
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                cv2.putText(
                    bgr,
                    text,
                    (x + dx, y + dy),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.6,
                    (0, 0, 0),
                    1,
                    cv2.LINE_AA,
                )
    cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)


def side_by_side(panels: Sequence[np.ndarray], *, gap_px: int = 8) -> np.ndarray:
    """Panels side by side, padded to one height, with a white gap between them.

    Parameters
    ----------
    panels : sequence of ndarray, each shape (H_i, W_i, 3) or (H_i, W_i)
        uint8 BGR (or grey) pictures.
    gap_px : int, optional
        Width of the white gap, pixels.

    Returns
    -------
    ndarray, shape (max H_i, sum W_i + gaps, 3)
        uint8 BGR.
    """
    h = max(p.shape[0] for p in panels)
    padded = []
    for i, p in enumerate(panels):
        if p.ndim == 2:
            p = cv2.cvtColor(p, cv2.COLOR_GRAY2BGR)
        if p.shape[0] < h:
            p = cv2.copyMakeBorder(
                p, 0, h - p.shape[0], 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255)
            )
        padded.append(p)
        if i < len(panels) - 1:
            padded.append(np.full((h, gap_px, 3), 255, np.uint8))
    return np.concatenate(padded, axis=1)


def write_png(path: str | os.PathLike[str], bgr: np.ndarray) -> None:
    """Write a picture as PNG, creating its folder.

    Parameters
    ----------
    path : str or os.PathLike
    bgr : ndarray, shape (H, W, 3) or (H, W)
        uint8 BGR (or grey).

    Raises
    ------
    OSError
        OpenCV could not write the file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write {path}")
