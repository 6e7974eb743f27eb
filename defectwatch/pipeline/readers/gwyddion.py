"""Gwyddion ``.gwy`` files (GWYP, Gwyddion 2), parsed with gwyfile (MIT, tuxu/gwyfile).

A .gwy file is what a person saved from Gwyddion: any number of channels ``/N/data`` with
titles ``/N/data/title``, already oriented as Gwyddion shows them (row 0 = top) and in SI
units (``si_unit_xy``, ``si_unit_z``). It says nothing of scan direction, bias or setpoint
unless the source's metadata were kept in ``/N/meta`` (read when there).

- channel choice: by title (``--channel`` matches a title exactly, case-insensitively, or by
  alias: Z = Topography/Height); the default ``Z`` falls back to the only channel whose z unit
  is metres, or the file's only channel, when no title matches;
- a channel without a lateral unit (``si_unit_xy`` empty) has no physical size: refused with a
  message naming what is missing (never guessed as metres); an empty z unit is reported as ""
  and read as is;
- the header's declared size is a promise: `expected_size` returns it;
- gwyfile 0.3.0 loops for ever on some corrupt files (a string or name without its NUL gives
  a component of size 0; an array count of 2^32 loops 2^32 times): while it parses, its
  ``component_from_buffer`` is wrapped by `_checked_component`, which refuses such
  components before gwyfile sees them.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from defectwatch.domain import ChannelInfo, Scan
from defectwatch.errors import ScanIncompleteError, ScanReadError
from defectwatch.pipeline.readers.base import (
    acquired_rows,
    as_image,
    check_direction,
    check_size_nm,
    file_head,
    file_size,
    library_errors,
    pick_channel,
)
from defectwatch.pipeline.sxm import finite_or_none, parse_number

log = logging.getLogger(__name__)

MAGIC = b"GWYP"
OLD_MAGIC = b"GWYO"  # Gwyddion 1 files: not supported by gwyfile
# GWY component type codes -> bytes per array item (None: not an array)
_TYPECODES = {
    b"o": None,
    b"s": None,
    b"b": None,
    b"c": None,
    b"i": None,
    b"q": None,
    b"d": None,
    b"C": 1,
    b"I": 4,
    b"Q": 8,
    b"D": 8,
    b"S": 1,
    b"O": 5,
}
_lock = threading.Lock()
_CHANNEL = re.compile(r"^/(\d+)/data$")


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC) or head.startswith(OLD_MAGIC)


def expected_size(path: str) -> int | None:
    """The size the top-level object declares (magic + name + 4-byte size + size)."""
    name = Path(path).name
    head = file_head(path, 256)
    size = file_size(path)
    promised = _promised(head, name)
    if promised is None or size < promised:
        return None
    return promised


def _promised(head: bytes, name: str) -> int | None:
    if head.startswith(OLD_MAGIC):
        raise ScanReadError(
            f"{name}: a Gwyddion 1 file (GWYO); open it in Gwyddion 2 and save it again"
        )
    if len(head) < len(MAGIC):
        if MAGIC.startswith(head):
            return None
        raise ScanReadError(f"{name}: not a Gwyddion .gwy file (does not start with GWYP)")
    if not head.startswith(MAGIC):
        raise ScanReadError(f"{name}: not a Gwyddion .gwy file (does not start with GWYP)")
    end = head.find(b"\0", len(MAGIC))
    if end < 0 or end + 5 > len(head):
        if len(head) < 256:
            return None
        raise ScanReadError(f"{name}: the top-level object name is corrupt")
    (body,) = struct.unpack("<I", head[end + 1 : end + 5])
    return end + 5 + body


def read(path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward") -> Scan:
    """Read one channel of a .gwy file into a `Scan` (see the module docstring)."""
    import gwyfile

    name = Path(path).name
    check_direction(name, direction)
    if direction == "backward":
        raise ScanReadError(
            f"{name}: a .gwy file holds processed channels, not forward/"
            "backward traces; pick the channel by its title with --channel"
        )
    size = file_size(path)
    promised = _promised(file_head(path, 256), name)
    if promised is None or size < promised:
        raise ScanIncompleteError(
            f"{name}: file is {size} bytes, its header promises "
            f"{promised or 'more'} (still being written?)"
        )
    with library_errors(name, "gwyfile"), _guarded_gwyfile():
        container = gwyfile.load(str(path))
        fields = _fields(container)
    if not fields:
        raise ScanReadError(f"{name}: no image channel (/N/data) in this file")
    titles = [t for _, t, _ in fields]
    try:
        title = pick_channel(name, titles, channel)
    except ScanReadError:
        metres = [t for _, t, f in fields if _unit(f, "si_unit_z") == "m"]
        if channel.lower() != "z" or (len(metres) != 1 and len(fields) != 1):
            raise
        title = metres[0] if len(metres) == 1 else fields[0][1]
    index, _, field = next(f for f in fields if f[1] == title)
    with library_errors(name, "gwyfile"):
        values = np.asarray(field.data, dtype=np.float64)
        xreal, yreal = float(field["xreal"]), float(field["yreal"])
        xoff, yoff = float(field.get("xoff", 0.0)), float(field.get("yoff", 0.0))
    unit_xy = _unit(field, "si_unit_xy")
    unit_z = _unit(field, "si_unit_z")
    to_m = _lateral_scale(unit_xy)
    if to_m is None:
        what = "si_unit_xy is empty" if not unit_xy else f"si_unit_xy is {unit_xy!r}"
        raise ScanReadError(
            f"{name}: channel {title!r} has no lateral unit ({what}); "
            f"its {field['xres']} x {field['yres']} pixels span {xreal:g} x {yreal:g} of an "
            "unknown length, so its nm per pixel is unknown. Set it in Gwyddion (Basic "
            "Operations > Dimensions and Units) and save again"
        )
    if not unit_z:
        log.warning("%s: channel %r has no z unit: values read as they are", name, title)
    data = as_image(values, name)
    width_nm, height_nm = xreal * to_m * 1e9, yreal * to_m * 1e9
    check_size_nm(name, width_nm, height_nm)
    meta = _meta(container, index)
    z_scale = (
        1.0 if unit_z not in ("nm", "pm", "Å") else {"nm": 1e-9, "pm": 1e-12, "Å": 1e-10}[unit_z]
    )
    if z_scale != 1.0:
        data = as_image(data * z_scale, name)
        unit_z = "m"
    return Scan(
        path=str(path),
        channel=title,
        direction="forward",
        unit=unit_z,
        data=data,
        acquired_rows=acquired_rows(data),
        width_nm=width_nm,
        height_nm=height_nm,
        scan_dir="unknown",
        angle_deg=0.0,
        offset_x_nm=xoff * to_m * 1e9,
        offset_y_nm=yoff * to_m * 1e9,
        recorded_at=_recorded_at(meta),
        bias_v=_meta_number(meta, "Bias", "V"),
        setpoint_a=_meta_number(meta, "Current", "A") or _meta_number(meta, "Setpoint", "A"),
        constant_height=False,
        temperature_k=None,
        comment=str(meta.get("Comment", "")).strip(),
        channels=tuple(ChannelInfo(t, _unit(f, "si_unit_z"), "forward") for _, t, f in fields),
        header={str(k): str(v) for k, v in meta.items()},
        file_format="gwyddion-gwy",
    )


class _guarded_gwyfile:  # noqa: N801 - used as a context manager
    """gwyfile's component parser wrapped by `_checked_component` while it runs."""

    def __enter__(self) -> None:
        import gwyfile.objects as objects

        _lock.acquire()
        self._objects = objects
        self._original = objects.component_from_buffer
        objects.component_from_buffer = _checked_component(self._original)

    def __exit__(self, *exc: object) -> None:
        self._objects.component_from_buffer = self._original
        _lock.release()


def _checked_component(original: Callable[..., Any]) -> Callable[..., Any]:
    def component(buf: bytes, return_size: bool = False) -> Any:
        pos = buf.find(b"\0")
        if pos < 0 or pos + 2 > len(buf):
            raise ValueError("a component name runs past the end of its object")
        code = buf[pos + 1 : pos + 2]
        if code not in _TYPECODES:
            raise ValueError(f"unknown component type {code!r}")
        body = pos + 2
        if code == b"s" and buf.find(b"\0", body) < 0:
            raise ValueError("a string runs past the end of its object")
        item = _TYPECODES[code]
        if item is not None:
            if len(buf) < body + 4:
                raise ValueError("an array's length is cut off")
            (count,) = struct.unpack("<I", buf[body : body + 4])
            if count * item > len(buf) - body - 4:
                raise ValueError(f"an array of {count} items does not fit in its object")
        result = original(buf, return_size)
        if return_size and result[3] <= 0:
            raise ValueError("an empty component")
        return result

    return component


def _fields(container: Any) -> list[tuple[int, str, Any]]:
    """(index, title, GwyDataField) of each ``/N/data`` channel, by index; untitled
    channels are called ``channel N``; duplicate titles get `` (N)``."""
    out: list[tuple[int, str, Any]] = []
    seen: set[str] = set()
    for key in container.keys():
        m = _CHANNEL.match(str(key))
        field = container[key]
        if not m or not hasattr(field, "data") or "xres" not in field:
            continue
        index = int(m.group(1))
        title = str(container.get(f"/{index}/data/title") or f"channel {index}").strip()
        if title in seen:
            title = f"{title} ({index})"
        seen.add(title)
        out.append((index, title, field))
    return sorted(out)


def _unit(field: Any, key: str) -> str:
    unit = field.get(key)
    return str(unit.get("unitstr", "") if hasattr(unit, "get") else (unit or "")).strip()


def _lateral_scale(unit: str) -> float | None:
    """Metres per lateral unit; None for an empty or non-length unit."""
    return {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9, "pm": 1e-12, "Å": 1e-10}.get(
        unit
    )


def _meta(container: Any, index: int) -> dict[str, Any]:
    meta = container.get(f"/{index}/meta")
    return dict(meta) if hasattr(meta, "items") else {}


def _meta_number(meta: dict[str, Any], key: str, unit: str) -> float | None:
    """``'1.25000 V'`` -> 1.25; ``'0.30 nA'`` -> 3e-10 (prefixed units); None otherwise."""
    text = str(meta.get(key, "")).strip()
    m = re.fullmatch(r"([-+0-9.eE]+)\s*([fpnuµmk]?)" + re.escape(unit), text)
    if not m:
        return None
    value = parse_number(m.group(1) + (m.group(2) or ""))
    return finite_or_none(value)


def _recorded_at(meta: dict[str, Any]) -> datetime | None:
    for key in ("Datetime", "Date", "Date and time"):
        text = str(meta.get(key, "")).strip()
        for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%d.%m.%Y %H:%M:%S"):
            try:
                return datetime.strptime(text, fmt)
            except ValueError:
                continue
    return None
