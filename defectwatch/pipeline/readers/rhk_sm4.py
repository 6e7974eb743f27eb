"""RHK Technology ``.sm4`` files, parsed with spym's SM4 parser (MIT, rescipy-project/spym).

spym 0.9.2's package ``__init__`` imports xarray, scipy and hvplot (holoviews, bokeh, panel:
~20 packages, none declared as its dependencies), only for its plotting and xarray accessors.
Its SM4 parser, ``spym/io/rhksm4/_sm4.py``, needs numpy alone, so that one module is loaded
from the installed spym package by file location without running the package ``__init__``
(`_load_parser`). What spym gets wrong or leaves open is done here:

- images: spym reshapes a page as ``(Xsize, Ysize)`` (wrong for non-square frames); we undo
  its flips, reshape ``(Ysize, Xsize)`` ourselves and orient as Gwyddion's ``rhk-sm4.c`` does:
  every line mirrored (RHK stores x descending; ``Xscale < 0`` in every file seen), rows
  flipped when ``Yscale > 0`` (an up scan stored bottom line first);
- a file whose pages are all spectra/lines: `NotAnImageError` ("no image in this file");
- a truncated or corrupt file: spym raises numpy errors (or leaves the file open): every
  exception becomes `ScanReadError`; the file handle is closed;
- aborted scans: each page's ``CompletedLineCount`` string says how many lines were scanned
  (= ``Ysize`` in every complete file seen); the stored lines after it become NaN (in
  acquisition order, so at the bottom of a down scan, the top of an up scan).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from defectwatch.domain import ChannelInfo, Scan
from defectwatch.errors import NotAnImageError, ScanReadError
from defectwatch.pipeline.readers.base import (
    acquired_rows,
    as_image,
    check_direction,
    check_size_nm,
    file_size,
    library_errors,
    pick_channel,
)
from defectwatch.pipeline.sxm import finite_or_none

log = logging.getLogger(__name__)

# "STiMage 005." in UTF-16LE, after a 2-byte header size (Gwyddion's rhk-sm4.c magic)
MAGIC = "STiMage 00".encode("utf-16-le")
MAGIC_OFFSET = 2
IMAGE_PAGE = 0  # RHK_DATA_IMAGE
SCAN_FORWARD, SCAN_BACKWARD = 0, 1  # RHK_ScanType: right (forward) / left (backward)
_lock = threading.Lock()


def sniff(head: bytes) -> bool:
    return head[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


@lru_cache(maxsize=1)
def _load_parser() -> ModuleType:
    """spym's ``io/rhksm4/_sm4.py`` as a stand-alone module (numpy only)."""
    spec = importlib.util.find_spec("spym")
    if spec is None or not spec.submodule_search_locations:
        raise ScanReadError("reading RHK .sm4 files needs spym (pip install spym==0.9.2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    source = folder / "io" / "rhksm4" / "_sm4.py"
    module_spec = importlib.util.spec_from_file_location("defectwatch._spym_sm4", source)
    if module_spec is None or module_spec.loader is None or not source.is_file():
        raise ScanReadError(f"spym's SM4 parser is not at {source}; reinstall spym==0.9.2")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _parse(path: str | os.PathLike[str]) -> Any:
    """spym's RHKsm4 object; the file is closed whatever happens."""
    name = Path(path).name
    head = _head(path)
    if not sniff(head):
        raise ScanReadError(f"{name}: not an RHK .sm4 file (no 'STiMage' signature)")
    parser = _load_parser()
    opened: list[Any] = []
    real_open = open

    def tracking_open(*args: Any, **kwargs: Any) -> Any:
        fh = real_open(*args, **kwargs)
        opened.append(fh)
        return fh

    with _lock:  # the parser module's `open` is swapped while it runs
        parser.open = tracking_open  # type: ignore[attr-defined]
        try:
            with library_errors(name, "spym's SM4 parser"):
                return parser.RHKsm4(str(path))
        finally:
            del parser.open  # type: ignore[attr-defined]
            for fh in opened:
                fh.close()


def _head(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError as exc:
        raise ScanReadError(
            f"{Path(path).name}: cannot read the file ({exc.strerror or exc})"
        ) from exc


def _images(sm4: Any) -> list[Any]:
    return [p for p in sm4._pages if int(p.attrs.get("RHK_PageDataType", -1)) == IMAGE_PAGE]


def expected_size(path: str) -> int | None:
    """An .sm4 has no size promise: its current size once spym parses it (None while it does
    not: still being written); NotAnImageError for a file of spectra only."""
    size = file_size(path)
    if not sniff(_head(path)):
        raise ScanReadError(f"{Path(path).name}: not an RHK .sm4 file (no 'STiMage' signature)")
    try:
        sm4 = _parse(path)
    except ScanReadError:
        return None  # cut short (still being written) or corrupt: the worker will say which
    if not _images(sm4):
        raise _no_image(Path(path).name, sm4)
    return size


def _no_image(name: str, sm4: Any) -> NotAnImageError:
    kinds = sorted(
        {
            str(p.attrs.get("RHK_PageDataTypeName", "?")).replace("RHK_DATA_", "").lower()
            for p in sm4._pages
        }
    )
    return NotAnImageError(
        f"{name}: no image in this file (its {len(sm4._pages)} pages hold "
        f"{', '.join(kinds) or 'nothing'}: spectra are not analysed)"
    )


def _label(page: Any) -> str:
    return str(page.attrs.get("RHK_Label", "")).strip() or f"page {page.attrs.get('RHK_PageID')}"


def read(path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward") -> Scan:
    """Read one image page (channel + direction) of an RHK .sm4 file into a `Scan`."""
    name = Path(path).name
    check_direction(name, direction)
    sm4 = _parse(path)
    images = _images(sm4)
    if not images:
        raise _no_image(name, sm4)
    labels = list(dict.fromkeys(_label(p) for p in images))
    chan = pick_channel(name, labels, channel)
    wanted = SCAN_FORWARD if direction == "forward" else SCAN_BACKWARD
    pages = [p for p in images if _label(p) == chan]
    page = next((p for p in pages if int(p.attrs.get("RHK_ScanType", 0)) == wanted), None)
    if page is None:
        have = sorted(
            {"forward" if int(p.attrs.get("RHK_ScanType", 0)) == 0 else "backward" for p in pages}
        )
        raise ScanReadError(
            f"{name}: channel {chan!r} was recorded {'/'.join(have)} only; "
            f"use --direction {have[0]}"
        )
    with library_errors(name, "the SM4 page"):
        data, width_m, height_m, y_up = _oriented(page, name)
    a = page.attrs
    check_size_nm(name, width_m * 1e9, height_m * 1e9)
    channels = []
    for label in labels:
        dirs = {int(p.attrs.get("RHK_ScanType", 0)) for p in images if _label(p) == label}
        unit = next(
            str(p.attrs.get("RHK_Zunits", "")).strip() for p in images if _label(p) == label
        )
        channels.append(
            ChannelInfo(
                label,
                unit,
                "both" if len(dirs) == 2 else ("forward" if SCAN_FORWARD in dirs else "backward"),
            )
        )
    setpoint = finite_or_none(_num(a.get("RHK_Current")))
    return Scan(
        path=str(path),
        channel=chan,
        direction=direction,
        unit=str(a.get("RHK_Zunits", "")).strip(),
        data=data,
        acquired_rows=acquired_rows(data),
        width_nm=width_m * 1e9,
        height_nm=height_m * 1e9,
        scan_dir="up" if y_up else "down",
        angle_deg=finite_or_none(_num(a.get("RHK_Angle"))) or 0.0,
        offset_x_nm=(finite_or_none(_num(a.get("RHK_Xoffset"))) or 0.0) * 1e9,
        offset_y_nm=(finite_or_none(_num(a.get("RHK_Yoffset"))) or 0.0) * 1e9,
        recorded_at=_recorded_at(a),
        bias_v=finite_or_none(_num(a.get("RHK_Bias"))),
        setpoint_a=setpoint,
        constant_height=str(a.get("RHK_ZPI_FeedbackType", "")).strip().lower() == "off",
        temperature_k=None,
        comment=str(a.get("RHK_UserText", "")).strip(),
        channels=tuple(channels),
        header={k: str(v) for k, v in a.items() if k != "RHK_PRMdata"},
        file_format="rhk-sm4",
    )


def _oriented(page: Any, name: str) -> tuple[np.ndarray, float, float, bool]:
    """(data as Gwyddion shows it, width m, height m, stored bottom line first)."""
    a = page.attrs
    nx, ny = int(a["RHK_Xsize"]), int(a["RHK_Ysize"])
    xscale, yscale = _num(a["RHK_Xscale"]) or 0.0, _num(a["RHK_Yscale"]) or 0.0
    zscale, zoffset = float(a["RHK_Zscale"]), float(a["RHK_Zoffset"])
    raw = np.asarray(page.data)
    if raw.size != nx * ny:
        raise ScanReadError(
            f"{name}: page {_label(page)!r} holds {raw.size} values, "
            f"{nx} x {ny} expected (truncated?)"
        )
    # undo spym's flips (made on its (Xsize, Ysize) reshape) to get the stored order back
    if xscale < 0:
        raw = np.flip(raw, axis=1)
    if yscale > 0:
        raw = np.flip(raw, axis=0)
    stored = raw.reshape(-1).reshape(ny, nx).astype(np.float64)
    completed = _completed_lines(a, ny)
    stored[completed:] = np.nan  # lines an aborted scan never reached
    data = stored[:, ::-1]  # Gwyddion mirrors every line
    if yscale > 0:
        data = data[::-1]
    values = data * zscale + zoffset
    return as_image(values, name), nx * abs(xscale), ny * abs(yscale), yscale > 0


def _completed_lines(attrs: dict[str, Any], ny: int) -> int:
    """Lines scanned: ``CompletedLineCount`` when it is 1..ny, else all of them."""
    try:
        done = int(attrs.get("RHK_CompletedLineCount", ny))
    except (TypeError, ValueError):
        return ny
    return done if 0 < done <= ny else ny


def _num(value: Any) -> float | None:
    """A header number; float32 fields as written (0.4, not 0.39999998)."""
    try:
        if isinstance(value, np.floating) and value.dtype == np.float32:
            return float(str(value))
        return float(value)
    except (TypeError, ValueError):
        return None


def _recorded_at(attrs: dict[str, Any]) -> datetime | None:
    try:
        return datetime.strptime(
            f"{attrs.get('RHK_Date', '')} {attrs.get('RHK_Time', '')}", "%m/%d/%y %H:%M:%S"
        )
    except ValueError:
        return None
