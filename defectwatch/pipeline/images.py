"""Rendered images (PNG, JPEG, TIFF) as scans, so labels made on renders can be used.

A render holds grey levels, not heights: `read_image_as_scan` keeps them as float32 in
arbitrary units (``unit = "a.u."``), colour converted to luminance (ITU-R BT.601:
0.299 R + 0.587 G + 0.114 B, as OpenCV does), alpha dropped. Its physical size comes from the
caller, or from the file name via `size_from_name` (the paper's names carry ``_100x100_``, nm).
Row 0 is the top row of the picture, which is the top of the frame as Gwyddion exports it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np

from defectwatch.domain import ChannelInfo, Scan
from defectwatch.errors import ConfigError, ScanReadError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# "<w>x<h>" between separators (or the ends), optionally followed by "nm"; not "...px"
_SIZE = re.compile(
    r"(?:^|[_\-\s.,(\[])(\d+(?:\.\d+)?)\s*[x\u00d7]\s*(\d+(?:\.\d+)?)\s*(nm)?"
    r"(?=$|[_\-\s.,)\]])",
    re.IGNORECASE,
)


def size_from_name(name: str | os.PathLike[str]) -> tuple[float, float] | None:
    """The frame size ``(width_nm, height_nm)`` written in a file name, or None.

    Reads ``<w>x<h>`` between separators (``_ - . space``), optionally with ``nm``:
    ``WSe2-SL445_211118_-1.4V_100x100_Z_030.jpg`` -> (100.0, 100.0); ``scan_30x20nm.png`` ->
    (30.0, 20.0). Only the file's own name is read, not its folders; when several sizes appear,
    one with ``nm`` wins, else the first.

    Parameters
    ----------
    name : str or os.PathLike
        A file name or path.

    Returns
    -------
    tuple of float or None
        ``(width_nm, height_nm)``, both positive; None when the name holds no size.
    """
    base = Path(name).name
    found = [
        (m.group(3) is not None, float(m.group(1)), float(m.group(2))) for m in _SIZE.finditer(base)
    ]
    found = [f for f in found if f[1] > 0 and f[2] > 0]
    if not found:
        return None
    with_nm = [f for f in found if f[0]]
    _, w, h = (with_nm or found)[0]
    return w, h


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a rendered image as grey levels.

    Colour becomes luminance (BT.601), alpha is dropped; a multi-page TIFF gives its first page.

    Parameters
    ----------
    path : str or os.PathLike
        PNG, JPEG, TIFF or BMP.

    Returns
    -------
    ndarray, shape (ny, nx)
        float32 grey levels: 8-bit files 0-255, 16-bit 0-65535, float files as stored.
    """
    return _decode(Path(path))[0]


def _decode(path: Path) -> tuple[np.ndarray, str, int]:
    """(grey float32 image, the file's sample dtype, its number of channels)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)  # also works with non-ASCII paths on Windows
    except OSError as e:
        raise ScanReadError(f"{path}: cannot read ({e.strerror})") from None
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if img is None:
        raise ScanReadError(
            f"{path}: not an image OpenCV can decode (PNG, JPEG, TIFF and BMP are supported)"
        )
    dtype = str(img.dtype)
    channels = img.shape[2] if img.ndim == 3 else 1
    if img.ndim == 3:
        if channels == 1:
            img = img[..., 0]
        elif channels == 2:  # grey + alpha
            img = img[..., 0]
        else:
            bgr = img[..., :3].astype(np.float32)
            img = 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]
    if img.ndim != 2:
        raise ScanReadError(f"{path}: unexpected image layout {img.shape}")
    return np.ascontiguousarray(img, dtype=np.float32), dtype, channels


def read_image_as_scan(
    path: str | os.PathLike[str],
    *,
    width_nm: float | None,
    height_nm: float | None = None,
    channel: str = "Z",
) -> Scan:
    """Wrap a rendered image as a `defectwatch.domain.Scan` of the given physical size.

    Parameters
    ----------
    path
        PNG, JPEG, TIFF (8- or 16-bit or float; grey or colour) or BMP file.
    width_nm, height_nm
        Physical size of the frame in nm; ``height_nm`` defaults to square pixels
        (``width_nm * ny / nx``). ``width_nm=None`` reads the size from the file name
        (`size_from_name`) and fails with `ConfigError` when the name holds none.
    channel
        Channel name recorded in the scan (the render's grey levels stand for it).

    Returns
    -------
    Scan
        ``data`` (ny, nx) float32 grey levels in arbitrary units, every row acquired, no bias
        or set point, ``header["source"] = "image"``.
    """
    path = Path(path)
    if width_nm is None:
        size = size_from_name(path)
        if size is None:
            raise ConfigError(
                f"{path.name}: the file name holds no frame size like "
                "'_100x100_'; give the size in nm (e.g. --size-nm 100x100)"
            )
        width_nm, height_nm = size
    if not (width_nm > 0 and np.isfinite(width_nm)):
        raise ConfigError(
            f"{path.name}: width_nm must be a positive number of nm, got {width_nm!r}"
        )
    if height_nm is not None and not (height_nm > 0 and np.isfinite(height_nm)):
        raise ConfigError(
            f"{path.name}: height_nm must be a positive number of nm, got {height_nm!r}"
        )
    data, dtype, channels = _decode(path)
    ny, nx = data.shape
    if height_nm is None:
        height_nm = float(width_nm) * ny / nx
    px, py = width_nm / nx, height_nm / ny
    if abs(px / py - 1) > 0.05:
        log.warning(
            "%s: pixels are not square (%.4g x %.4g nm); is the size right?", path.name, px, py
        )
    header = {
        "source": "image",
        "image_file": path.name,
        "image_shape": f"{ny}x{nx}",
        "image_dtype": dtype,
        "image_channels": str(channels),
        "note": "rendered image wrapped as a scan: grey levels in arbitrary units, not "
        "heights; size given by the user or the file name",
    }
    return Scan(
        path=str(path),
        channel=channel,
        direction="forward",
        unit="a.u.",
        data=data,
        acquired_rows=np.ones(ny, dtype=bool),
        width_nm=float(width_nm),
        height_nm=float(height_nm),
        scan_dir="down",
        angle_deg=0.0,
        offset_x_nm=0.0,
        offset_y_nm=0.0,
        recorded_at=None,
        bias_v=None,
        setpoint_a=None,
        constant_height=False,
        temperature_k=None,
        comment=f"rendered image {path.name}",
        channels=(ChannelInfo(channel, "a.u.", "forward"),),
        header=header,
    )
