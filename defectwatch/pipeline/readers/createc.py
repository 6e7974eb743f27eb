"""Createc ``.dat`` images (``[Paramco32]``): a key=value text header, ``DATA``, then one zlib
stream of little-endian float32 values.

No maintained Python reader exists (the PyPI ``createc`` package drives the instrument; the
converters in lab repositories are not packages), so this small one follows the layout that
Gwyddion's ``createc.c`` documents and the real files in ``shared/fixtures/real-formats``
show:

- header lines ``Key / Alias=value`` (CRLF), zero-padded to about 16 KiB, then ``DATA``;
- decompressed: 4 unused bytes, then ``Channels`` planes of ``Num.Y x Num.X`` float32 in DAC
  units, in the order Z forward, current forward, Z backward, current backward (2 planes:
  Z and current forward only); then a few hundred unused values;
- rows are stored in acquisition order and shown so by Gwyddion (row 0 = first line: the top
  for ``ScanYDirec=1``, the only value seen); backward lines are stored left to right already
  (the forward/backward correlation of every fixture is > 0.5 unmirrored, < 0 mirrored);
- Z [m] = value x (20 V / 2^bits) x GainZ x ZPiezoconst [Å/V] x 1e-10 (Gwyddion's formula,
  with the ``DAC-Type`` bits); current [A] = value x (20 V / 2^bits) / 10^Gainpreamp;
- the frame is ``Length x[A]`` x ``Length y[A]``; a scan stopped early keeps its full size and
  its lines not scanned are exactly 0.0 in every plane: they become NaN.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np

from defectwatch.domain import Scan
from defectwatch.errors import NotAnImageError, ScanIncompleteError, ScanReadError
from defectwatch.pipeline.readers.base import (
    acquired_rows,
    as_image,
    channel_infos,
    check_direction,
    check_size_nm,
    file_size,
    pick_channel,
)
from defectwatch.pipeline.sxm import finite_or_none, parse_number

log = logging.getLogger(__name__)

MAGIC = b"[Paramco32]"
OLDER = (b"[Parameter]", b"[Paramet32]")  # uncompressed 16/32-bit files: not supported
SPECTRA = (b"[ParVERT30]", b"[ParVERT32]")  # Createc point spectra (.VERT)
DATA_MARKER = b"DATA"
MAX_HEADER_BYTES = 1 << 16
MAX_PIXELS_PER_SIDE = 1 << 14
FULL_SCALE_V = 20.0  # DAC output range, +-10 V
PLANES = (
    ("Z", "m", "forward"),
    ("Current", "A", "forward"),
    ("Z", "m", "backward"),
    ("Current", "A", "backward"),
)
_NAME_TIME = re.compile(r"(\d{6})\.(\d{6})")  # A250407.141806.dat: yymmdd.hhmmss


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC) or head.startswith(OLDER) or head.startswith(SPECTRA)


def parse_header(text: str) -> dict[str, str]:
    """``Key / Alias=value`` lines -> {key: value, alias: value} (stripped)."""
    out: dict[str, str] = {}
    for line in text.replace("\r", "\n").split("\n"):
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            continue
        value = value.strip()
        for part in key.split(" / "):
            part = part.strip()
            if part and part not in out:
                out[part] = value
        out.setdefault(key.strip(), value)
    return out


def _split(raw: bytes, name: str) -> tuple[dict[str, str], int]:
    """(header, offset of the zlib stream) after checking the magic."""
    if len(raw) < len(MAGIC):
        if MAGIC.startswith(raw):
            raise ScanIncompleteError(
                f"{name}: file is {len(raw)} bytes, the header has not "
                "been written yet (still being written?)"
            )
        raise ScanReadError(
            f"{name}: not a Createc .dat image (does not start with {MAGIC.decode()})"
        )
    if raw.startswith(SPECTRA):
        raise NotAnImageError(f"{name}: a Createc point spectrum, no image in this file")
    if raw.startswith(OLDER):
        raise ScanReadError(
            f"{name}: an uncompressed Createc file ({raw[:11].decode()}); only "
            f"{MAGIC.decode()} files are read: re-save it with a current "
            "STMAFM, or export it to .sxm"
        )
    if not raw.startswith(MAGIC):
        raise ScanReadError(
            f"{name}: not a Createc .dat image (does not start with {MAGIC.decode()})"
        )
    at = -1
    start = 0
    while True:  # the marker on its own line (after CR/LF or the zero padding)
        at = raw.find(DATA_MARKER, start, MAX_HEADER_BYTES + len(DATA_MARKER))
        if at < 0 or raw[at - 1 : at] in (b"\n", b"\r", b"\0"):
            break
        start = at + 1
    if at < 0:
        if len(raw) < MAX_HEADER_BYTES:
            raise ScanIncompleteError(
                f"{name}: no DATA marker yet ({len(raw)} bytes; still being written?)"
            )
        raise ScanReadError(
            f"{name}: no DATA marker in the first {MAX_HEADER_BYTES} bytes; the header is corrupt"
        )
    text = raw[:at].split(b"\0", 1)[0].decode("latin-1")
    return parse_header(text), at + len(DATA_MARKER)


def _int(header: dict[str, str], key: str, name: str) -> int:
    value = parse_number(header.get(key))
    if value is None or not np.isfinite(value) or value != int(value):
        raise ScanReadError(
            f"{name}: header field {key!r} is {header.get(key)!r}, expected an integer"
        )
    return int(value)


def _float(header: dict[str, str], *keys: str) -> float | None:
    for key in keys:
        value = finite_or_none(parse_number(header.get(key)))
        if value is not None:
            return value
    return None


def _geometry(header: dict[str, str], name: str) -> tuple[int, int, int]:
    nx = _int(header, "Num.X", name)
    ny = _int(header, "Num.Y", name)
    if not (1 < nx <= MAX_PIXELS_PER_SIDE and 1 < ny <= MAX_PIXELS_PER_SIDE):
        raise ScanReadError(
            f"{name}: Num.X x Num.Y = {nx} x {ny} is out of range "
            f"(2..{MAX_PIXELS_PER_SIDE} per side)"
        )
    planes = _int(header, "Channels", name) if "Channels" in header else 2
    if planes not in (1, 2, 4):
        raise ScanReadError(f"{name}: Channels = {planes}; expected 1, 2 or 4 planes")
    return nx, ny, planes


def _inflate(raw: bytes, offset: int, limit: int, name: str) -> bytes:
    """Decompress at most ``limit`` bytes; ScanIncompleteError when the stream stops short."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw[offset:], limit)
    except zlib.error as exc:
        raise ScanReadError(f"{name}: the compressed data after DATA are corrupt ({exc})") from None
    if len(out) < limit and not d.eof:
        raise ScanIncompleteError(
            f"{name}: the compressed data end early ({len(raw)} bytes, "
            f"{len(out)} of {limit} data bytes; still being written?)"
        )
    return out


def expected_size(path: str) -> int | None:
    """The file's size once its zlib stream is complete (None while it is not); raises
    ScanReadError / NotAnImageError for a file that is no Createc image."""
    name = Path(path).name
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ScanReadError(f"{name}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        header, offset = _split(raw, name)
        _geometry(header, name)
        d = zlib.decompressobj()
        pending = raw[offset:]
        while pending and not d.eof:  # streamed: the whole stream is checked, never held
            d.decompress(pending, 1 << 22)
            pending = d.unconsumed_tail
        if not d.eof:
            d.flush()  # output held back by the length limit may still end the stream
        if not d.eof:
            return None
    except ScanIncompleteError:
        return None
    except zlib.error as exc:
        raise ScanReadError(f"{name}: the compressed data after DATA are corrupt ({exc})") from None
    return len(raw)


def read(path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward") -> Scan:
    """Read one plane of a Createc ``.dat`` image into a `Scan` (see the module docstring)."""
    name = Path(path).name
    check_direction(name, direction)
    size = file_size(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ScanReadError(f"{name}: cannot read the file ({exc.strerror or exc})") from exc
    if len(raw) != size:
        raise ScanIncompleteError(f"{name}: file changed while being read (still being written?)")
    header, offset = _split(raw, name)
    nx, ny, n_planes = _geometry(header, name)
    block = nx * ny * 4
    payload = _inflate(raw, offset, 4 + n_planes * block, name)
    if len(payload) < 4 + n_planes * block:
        raise ScanReadError(
            f"{name}: the data hold {len(payload)} bytes, {n_planes} planes of "
            f"{nx} x {ny} need {4 + n_planes * block}"
        )
    planes = PLANES[:n_planes] if n_planes != 1 else PLANES[:1]
    names = list(dict.fromkeys(p[0] for p in planes))
    chan = pick_channel(name, names, channel)
    index = next((i for i, p in enumerate(planes) if p[0] == chan and p[2] == direction), None)
    if index is None:
        raise ScanReadError(
            f"{name}: channel {chan!r} was recorded forward only; use --direction forward"
        )
    values = np.frombuffer(payload, dtype="<f4", count=nx * ny, offset=4 + index * block)
    data = values.reshape(ny, nx).astype(np.float32)

    # lines never scanned are exactly 0.0 in every plane (an aborted scan keeps its size)
    stack = np.frombuffer(payload, dtype="<f4", count=n_planes * nx * ny, offset=4)
    blank = (stack.reshape(n_planes, ny, nx) == 0).all(axis=(0, 2))
    bits = _dac_bits(header)
    volts_per_dac = FULL_SCALE_V / float(1 << bits)
    if chan == "Z":
        gain = _float(header, "GainZ") or 1.0
        piezo_a_per_v = _float(header, "ZPiezoconst")
        if piezo_a_per_v is None:
            dac_a = _float(header, "Dacto[A]z")
            if dac_a is None:
                raise ScanReadError(
                    f"{name}: neither ZPiezoconst nor Dacto[A]z in the "
                    "header: the height scale is unknown"
                )
            scale = dac_a * gain * 1e-10
        else:
            scale = volts_per_dac * gain * piezo_a_per_v * 1e-10
        unit = "m"
    else:
        pre = _float(header, "Gainpreamp", "GainPre 10^", "GainPre")
        if pre is None:
            raise ScanReadError(
                f"{name}: no Gainpreamp in the header: the current scale is unknown"
            )
        scale = volts_per_dac / 10.0**pre
        unit = "A"
    with np.errstate(over="ignore", invalid="ignore"):
        data = data * np.float32(scale)
    data[blank] = np.nan
    data = as_image(data, name)

    width_nm = (_float(header, "Length x[A]") or 0.0) / 10.0
    height_nm = (_float(header, "Length y[A]") or 0.0) / 10.0
    check_size_nm(name, width_nm, height_nm)
    bias_mv = _float(header, "Biasvolt[mV]", "BiasVolt.[mV]", "BiasVoltage")
    setpoint = _float(header, "SetPoint", "Current[A]")
    if setpoint is None and (iset := _float(header, "FBLogIset")) is not None:
        setpoint = iset * 1e-12  # pA
    memo = "\n".join(v for k in ("memo:0", "memo:1", "memo:2") if (v := header.get(k, "").strip()))
    title = header.get("Titel", "").strip()
    directions = ["forward"] + (["backward"] if n_planes == 4 else [])
    return Scan(
        path=str(path),
        channel=chan,
        direction=direction,
        unit=unit,
        data=data,
        acquired_rows=acquired_rows(data),
        width_nm=width_nm,
        height_nm=height_nm,
        scan_dir="down" if header.get("ScanYDirec", "1").strip() == "1" else "up",
        angle_deg=_float(header, "Rotation") or 0.0,
        offset_x_nm=(_float(header, "OffsetX", "Scanrotoffx") or 0.0) * _offset_nm(header),
        offset_y_nm=(_float(header, "OffsetY", "Scanrotoffy") or 0.0) * _offset_nm(header),
        recorded_at=_recorded_at(name),
        bias_v=None if bias_mv is None else bias_mv / 1000.0,
        setpoint_a=setpoint,
        constant_height=header.get("CHMode", "0").strip() not in ("0", ""),
        temperature_k=_float(header, "T_AUXADC6[K]", "T_ADC2[K]"),
        comment="\n".join(t for t in (title, memo) if t),
        channels=channel_infos([(n, "m" if n == "Z" else "A") for n in names], directions),
        header=header,
        file_format="createc-dat",
    )


def _dac_bits(header: dict[str, str]) -> int:
    m = re.search(r"(\d+)", header.get("DAC-Type", ""))
    bits = int(m.group(1)) if m else 16
    return bits if 8 <= bits <= 32 else 16


def _offset_nm(header: dict[str, str]) -> float:
    """nm per DAC of the frame offset (Dacto[A]xy x GainX, Å -> nm)."""
    dac_a = _float(header, "Dacto[A]xy") or 0.0
    return dac_a * (_float(header, "GainX") or 1.0) / 10.0


def _recorded_at(name: str) -> datetime | None:
    """STMAFM names files ``A<yymmdd>.<hhmmss>.dat``; the header holds no acquisition time."""
    m = _NAME_TIME.search(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1) + m.group(2), "%y%m%d%H%M%S")
    except ValueError:
        return None
