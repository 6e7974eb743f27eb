"""`read_scan` for every supported format, and the Nanonis `.sxm` reader (`read_sxm`).

`read_scan` picks the reader by the file's content (see `defectwatch.pipeline.readers`).
`read_sxm`: validated first, then parsed with nanonispy2. nanonispy2 parses the header; the
data blocks are decoded here because nanonispy2 assumes every channel is recorded in both
directions and cannot tell a truncated file from a corrupt one.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from nanonispy2.read import _parse_sxm_header

from defectwatch.domain import Scan
from defectwatch.errors import ScanReadError
from defectwatch.pipeline.sxm import (
    SxmLayout,
    finite_or_none,
    header_tags,
    parse_number,
    read_blocks,
    read_layout,
)

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward")


def read_scan(
    path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward"
) -> Scan:
    """Read one channel and direction of any supported scan file (.sxm, .sm4, MATRIX
    ``*_mtrx``, Createc .dat, .gwy): see `defectwatch.pipeline.readers.read_scan`."""
    from defectwatch.pipeline.readers import read_scan as read_any

    return read_any(path, channel=channel, direction=direction)


def read_sxm(
    path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward"
) -> Scan:
    """Read one channel and direction of a `.sxm` file (any case of suffix).

    Returns native float32 in SI units, row 0 = top of the frame as Gwyddion shows it.
    Raises `ScanIncompleteError` for a file shorter than its header promises (retry later) and
    `ScanReadError` for anything else wrong with the file; nothing else escapes.
    """
    name = Path(path).name
    if direction not in DIRECTIONS:
        raise ScanReadError(f"{name}: direction {direction!r} is not one of {DIRECTIONS}")
    layout = read_layout(path)
    try:
        header = _nanonispy_header(layout.header_text)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ScanReadError(
            f"{name}: header cannot be parsed ({type(exc).__name__}: {exc}); "
            "is it a Nanonis .sxm file?"
        ) from None
    tags = header_tags(layout.header_text)

    chan = _pick_channel(layout, channel)
    blocks = read_blocks(layout, chan.name)
    if direction not in blocks:
        raise ScanReadError(
            f"{name}: channel {chan.name!r} was recorded {chan.direction} "
            f"only; use --direction {next(iter(blocks))}"
        )
    data = blocks[direction]
    scan_dir = str(header.get("scan_dir", "down")).strip().lower()
    if scan_dir == "up":
        data = data[::-1]
    if direction == "backward":
        data = data[:, ::-1]
    data = np.ascontiguousarray(data, dtype=np.float32)
    acquired = np.isfinite(data).any(axis=1)

    width_m, height_m = _pair(header, "scan_range", name)
    if not (width_m > 0 and height_m > 0 and np.isfinite(width_m) and np.isfinite(height_m)):
        raise ScanReadError(f"{name}: SCAN_RANGE {width_m} x {height_m} m is not a positive size")
    off_x, off_y = _pair(header, "scan_offset", name)
    z_ctrl = header.get("z-controller") or {}
    on = _first(z_ctrl.get("on"))
    setpoint_value, _, setpoint_unit = (_first(z_ctrl.get("Setpoint")) or "").partition(" ")
    comment = tags.get("COMMENT", "")

    return Scan(
        path=str(path),
        channel=chan.name,
        direction=direction,
        unit=chan.unit,
        data=data,
        acquired_rows=acquired,
        width_nm=width_m * 1e9,
        height_nm=height_m * 1e9,
        scan_dir=scan_dir,
        angle_deg=finite_or_none(parse_number(header.get("scan_angle"))) or 0.0,
        offset_x_nm=finite_or_none(off_x * 1e9) or 0.0,
        offset_y_nm=finite_or_none(off_y * 1e9) or 0.0,
        recorded_at=_recorded_at(header),
        bias_v=finite_or_none(_float(header.get("bias"))),
        setpoint_a=(
            finite_or_none(parse_number(setpoint_value)) if setpoint_unit.strip() == "A" else None
        ),
        constant_height=(on is not None and on.strip() == "0"),
        temperature_k=finite_or_none(parse_number(header.get("temperature 1>temperature 1 (k)"))),
        comment=comment,
        channels=layout.channels,
        header=tags,
    )


def _nanonispy_header(header_text: str) -> dict[str, Any]:
    """Hand nanonispy2 a header it can parse: no blank lines outside COMMENT.

    nanonispy2 raises IndexError on blank lines inside tables (converter-made files) and drops
    the last three lines it is given (the end tag and the blank lines before it).
    """
    lines = header_text.split("\n")
    if lines and lines[-1].startswith(":SCANIT_END:"):
        lines = lines[:-1]
    kept: list[str] = []
    in_comment = False
    for line in lines:
        if line.startswith(":") and line.endswith(":") and "\t" not in line:
            in_comment = line == ":COMMENT:"
        if line.strip() or in_comment:
            kept.append(line)
    return _parse_sxm_header("\n".join(kept) + "\n\n:SCANIT_END:\n")


def _pick_channel(layout: SxmLayout, wanted: str):
    for exact in (True, False):
        for ch in layout.channels:
            if (ch.name == wanted) if exact else (ch.name.lower() == wanted.lower()):
                return ch
    names = ", ".join(c.name for c in layout.channels)
    raise ScanReadError(f"{Path(layout.path).name}: no channel {wanted!r}; it has {names}")


def _pair(header: dict[str, Any], key: str, name: str) -> tuple[float, float]:
    values = np.asarray(header.get(key), dtype=float).ravel()
    if values.size != 2:
        raise ScanReadError(f"{name}: {key.upper()} should hold two numbers, got {values.size}")
    return float(values[0]), float(values[1])


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _first(value: Any) -> str | None:
    if isinstance(value, (tuple, list)):
        return str(value[0]) if value else None
    return None if value is None else str(value)


def _recorded_at(header: dict[str, Any]) -> datetime | None:
    date = str(header.get("rec_date", "")).strip()
    time = str(header.get("rec_time", "")).strip()
    for fmt in ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M"):
        try:
            return datetime.strptime(f"{date} {time}", fmt)
        except ValueError:
            continue
    try:
        return datetime.strptime(date, "%d.%m.%Y")
    except ValueError:
        return None
