"""Scienta Omicron MATRIX images (``<chain>--<run>_<cycle>.<Channel>_mtrx``), parsed with
access2theMatrix (BSD, maintained by Stephan Zevenhuizen).

A MATRIX data file holds raw integers only; the frame size, pixel counts, transfer function
(raw -> SI), bias and setpoint live in the *result chain* file ``<chain>_0001.mtrx`` (and
``_0002.mtrx``...) beside it. Without that file the data cannot be read: `expected_size` says
so (`ScanIncompleteError`, so the daemon waits for it and names it when it never comes).

What access2theMatrix returns and what is done here:

- ``select_image(trace)`` gives the image with row 0 = the *first* line scanned for up traces
  (the bottom of the frame) and the backward traces already un-mirrored. Gwyddion's
  ``omicronmatrix.c`` puts the first up line at the bottom row, so rows are flipped here: row 0
  = top as Gwyddion shows it. Down traces (Y_Retrace) come bottom row first as well: flipped.
- an aborted scan: access2theMatrix crops the image to the lines scanned and shrinks its
  height; it is padded back to the planned ``XYScanner.Lines`` with NaN rows (at the end not
  scanned: the top for an up scan), so the acquired fraction and area are right.
- errors: access2theMatrix returns a message and no data instead of raising; that message is
  turned into `ScanReadError`.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from defectwatch.domain import ChannelInfo, Scan
from defectwatch.errors import NotAnImageError, ScanIncompleteError, ScanReadError
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

MAGIC = b"ONTMATRX0101"
DATA_TAG = b"TLKB"  # data files: ONTMATRX0101 then TLKB; the result chain: ONTMATRX0101 TLKB too
_NAME = re.compile(
    r"^(?P<chain>.+)--(?P<run>\d+)_(?P<cycle>\d+)\.(?P<channel>[^.]+)_mtrx$", re.IGNORECASE
)


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC)


def chain_file(path: str | os.PathLike[str]) -> Path:
    """The result chain file a data file needs: ``<chain>_0001.mtrx`` beside it."""
    p = Path(path)
    m = _NAME.match(p.name)
    if not m:
        raise ScanReadError(
            f"{p.name}: not a MATRIX data file name (expected <name>--<run>_<cycle>.<Channel>_mtrx)"
        )
    return p.with_name(f"{m.group('chain')}_0001.mtrx")


def _check(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(channel in the file name, chain file), after the magic and the chain file are there."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(MAGIC))
    except OSError as exc:
        raise ScanReadError(f"{p.name}: cannot read the file ({exc.strerror or exc})") from exc
    if len(head) < len(MAGIC) and MAGIC.startswith(head):
        raise ScanIncompleteError(f"{p.name}: file is {len(head)} bytes (still being written?)")
    if head != MAGIC:
        raise ScanReadError(
            f"{p.name}: not an Omicron MATRIX file (does not start with {MAGIC.decode()})"
        )
    if p.name.lower().endswith(".mtrx"):
        raise NotAnImageError(
            f"{p.name}: a MATRIX result chain (parameter) file, not an "
            "image: read the .<Channel>_mtrx data files beside it"
        )
    chain = chain_file(p)
    if not chain.is_file():
        raise ScanIncompleteError(
            f"{p.name}: its result chain file {chain.name} is not beside it; MATRIX keeps the "
            "frame size, scaling and bias there (copy it too, or wait until MATRIX writes it)"
        )
    m = _NAME.match(p.name)
    assert m is not None  # chain_file checked the name
    if m.group("channel").endswith(")"):
        raise NotAnImageError(
            f"{p.name}: a MATRIX spectroscopy curve ({m.group('channel')}), no image in this file"
        )
    return m.group("channel"), chain


def expected_size(path: str) -> int | None:
    """No size promise in MATRIX files: the current size once the chain file is beside it;
    ScanIncompleteError (the daemon waits, then says why) while it is not."""
    _check(path)
    return file_size(path)


def read(path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward") -> Scan:
    """Read one trace of a MATRIX image file into a `Scan` (the file holds one channel)."""
    import access2thematrix

    name = Path(path).name
    check_direction(name, direction)
    file_channel, chain = _check(path)
    pick_channel(name, [file_channel], channel)  # a .Z_mtrx file is channel Z only
    mtrx = access2thematrix.MtrxData()
    with library_errors(name, "access2theMatrix"):
        traces, message = mtrx.open(str(path))
    if mtrx.scan is None or mtrx.axis is None or not traces:
        raise ScanReadError(
            f"{name}: access2theMatrix: {message} (is {chain.name} the result "
            "chain this file was recorded in?)"
        )
    names = [str(t) for t in traces.values()]
    up = [t for t in names if t.endswith("/up")]
    wanted = (
        f"{direction}/up"
        if f"{direction}/up" in names
        else next((t for t in names if t.startswith(direction)), None)
    )
    if wanted is None:
        raise ScanReadError(
            f"{name}: no {direction} trace (it has {', '.join(names)}); use --direction forward"
        )
    with library_errors(name, "access2theMatrix"):
        image, _msg = mtrx.select_image(wanted)
        values = np.asarray(image.data, dtype=np.float64)
        planned = int(mtrx.axis[2][2])
        width_m = float(mtrx.axis[0][1])
        height_m = float(mtrx.axis[1][1])
    scanned = values.shape[0]
    if scanned > planned or values.ndim != 2:
        raise ScanReadError(f"{name}: {scanned} lines read, {planned} planned")
    frame = np.full((planned, values.shape[1]), np.nan)
    frame[:scanned] = values  # access2theMatrix: row 0 = first line (bottom of the frame)
    data = as_image(frame[::-1], name)  # Gwyddion: row 0 = top
    check_size_nm(name, width_m * 1e9, height_m * 1e9)
    param = mtrx.param
    unit = str(mtrx.channel_name_and_unit[1] or "")
    return Scan(
        path=str(path),
        channel=file_channel,
        direction=direction,
        unit=unit,
        data=data,
        acquired_rows=acquired_rows(data),
        width_nm=width_m * 1e9,
        height_nm=height_m * 1e9,
        scan_dir="up" if wanted.endswith("/up") or not up else "down",
        angle_deg=_value(param, "EEPA::XYScanner.Angle") or 0.0,
        offset_x_nm=(_value(param, "EEPA::XYScanner.X_Offset") or 0.0) * 1e9,
        offset_y_nm=(_value(param, "EEPA::XYScanner.Y_Offset") or 0.0) * 1e9,
        recorded_at=_recorded_at(param.get("BKLT")),
        bias_v=_value(param, "EEPA::GapVoltageControl.Voltage"),
        setpoint_a=_setpoint(param),
        constant_height=_value(param, "EEPA::Regulator.Feedback_Loop_Enabled") == 0.0,
        temperature_k=None,
        comment="\n".join(
            t
            for t in (
                str(getattr(mtrx, "creation_comment", "")).strip(),
                str(getattr(mtrx, "sample_name", "")).strip(),
            )
            if t
        ),
        channels=(
            ChannelInfo(
                file_channel, unit, "both" if len(up) == 2 or len(names) == 4 else "forward"
            ),
        ),
        header={k: str(v) for k, v in param.items() if not k.startswith(("DICT", "XFER"))},
        file_format="omicron-matrix",
    )


def _value(param: dict[str, Any], key: str) -> float | None:
    v: Any = param.get(key)
    if isinstance(v, (list, tuple)) and v:
        v = v[0]
    if isinstance(v, bool):
        return float(v)
    try:
        return finite_or_none(float(v))
    except (TypeError, ValueError):
        return None


def _setpoint(param: dict[str, Any]) -> float | None:
    v = param.get("EEPA::Regulator.Setpoint_1")
    if isinstance(v, (list, tuple)) and len(v) > 1 and str(v[1]).lower().startswith("amp"):
        return _value(param, "EEPA::Regulator.Setpoint_1")
    return None


def _recorded_at(text: Any) -> datetime | None:
    """access2theMatrix writes the data file's time stamp in the machine's local time."""
    try:
        return datetime.strptime(str(text), "%A, %d %B %Y %H:%M:%S")
    except ValueError:
        return None
