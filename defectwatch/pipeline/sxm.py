"""The Nanonis `.sxm` byte layout: validate a file before parsing it, and write one.

Layout (see ``shared/reference/sxm-format.md``)::

    :NANONIS_VERSION:\\n2\\n ... :DATA_INFO:\\n<tab table>\\n\\n:SCANIT_END:\\n\\n\\n
    \\x1a\\x04<big-endian float32>

Data blocks follow DATA_INFO row order; direction ``both`` is a forward block then a backward
block, each ``ny x nx`` in acquisition order (up scans bottom line first, backward lines
right-to-left). Values are SI.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectwatch.domain import ChannelInfo
from defectwatch.errors import ScanIncompleteError, ScanReadError

log = logging.getLogger(__name__)

MAGIC = b":NANONIS_VERSION:"
END_TAG = b":SCANIT_END:"
DATA_MARKER = b"\x1a\x04"
MAX_PIXELS_PER_SIDE = 1 << 15
HEADER_ENCODING = "cp1252"  # LabVIEW on Windows; undefined bytes are replaced, never fatal

_SI_PREFIX = {
    "f": 1e-15,
    "p": 1e-12,
    "n": 1e-9,
    "u": 1e-6,
    "µ": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
}
_NUMBER = re.compile(
    r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf(?:inity)?|nan)"
    r"\s*([fpnuµmkMG])?\s*$",
    re.IGNORECASE,
)


def parse_number(text: str | None) -> float | None:
    """Parse a header number defensively: ``4.000000E-9``, ``1.351E+2``, ``1.55k``, ``Inf``.

    Returns None for ``n/a``, ``TRUE`` or anything else that is not a number.
    """
    if text is None:
        return None
    m = _NUMBER.match(text)
    if not m:
        return None
    value = float(m.group(1))
    return value * _SI_PREFIX[m.group(2)] if m.group(2) else value


@dataclass(frozen=True)
class SxmLayout:
    """What the header of a `.sxm` file promises, checked against the file's size."""

    path: str
    header_text: str  # decoded header up to and including the ':SCANIT_END:' line
    data_offset: int  # byte where float32 data start (right after \\x1a\\x04)
    nx: int
    ny: int
    channels: tuple[ChannelInfo, ...]
    file_size: int

    @property
    def blocks(self) -> int:
        """Number of ny x nx float32 blocks in the data section."""
        return sum(2 if c.direction == "both" else 1 for c in self.channels)

    @property
    def expected_size(self) -> int:
        """Total file size in bytes that the header promises."""
        return self.data_offset + self.blocks * self.nx * self.ny * 4


def header_tags(header_text: str) -> dict[str, str]:
    """Map each ``:TAG:`` to its value lines joined by newlines (table rows kept as they are)."""
    tags: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in header_text.split("\n"):
        if len(line) >= 2 and line.startswith(":") and line.endswith(":") and "\t" not in line:
            if name is not None:
                tags[name] = "\n".join(lines).strip("\n")
            name, lines = line[1:-1], []
        elif name is not None:
            lines.append(line.rstrip("\r"))
    if name is not None:
        tags[name] = "\n".join(lines).strip("\n")
    return tags


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of a tab table (DATA_INFO, Z-CONTROLLER) as dicts; blank lines are skipped."""
    rows = [r.strip("\t").split("\t") for r in text.split("\n") if r.strip()]
    if not rows:
        return []
    keys = [k.strip() for k in rows[0]]
    return [dict(zip(keys, (v.strip() for v in r))) for r in rows[1:]]


def read_layout(
    path: str | os.PathLike[str], *, head: bytes | None = None, file_size: int | None = None
) -> SxmLayout:
    """Validate a file's header and size without reading its data.

    Raises `ScanIncompleteError` when the file is shorter than its header promises (or the
    header itself is not complete yet: the file may still be being written), and
    `ScanReadError` for anything else that is wrong, naming the file and the problem.
    """
    name = Path(path).name
    try:
        if file_size is None:
            file_size = os.path.getsize(path)
        if head is None:
            with open(path, "rb") as fh:
                head = fh.read(min(file_size, 1 << 20))
    except OSError as exc:
        raise ScanReadError(f"{name}: cannot read the file ({exc.strerror or exc})") from exc

    if len(head) < len(MAGIC):
        if MAGIC.startswith(head):
            raise ScanIncompleteError(
                f"{name}: file is {len(head)} bytes, the header has not "
                "been written yet (still being written?)"
            )
        raise ScanReadError(
            f"{name}: not a Nanonis .sxm file (does not start with {MAGIC.decode()})"
        )
    if not head.startswith(MAGIC):
        raise ScanReadError(
            f"{name}: not a Nanonis .sxm file (does not start with {MAGIC.decode()})"
        )

    end = head.find(END_TAG)
    if end < 0:
        if len(head) >= (1 << 20):
            raise ScanReadError(
                f"{name}: no {END_TAG.decode()} in the first MiB; the header is corrupt"
            )
        raise ScanIncompleteError(
            f"{name}: header has no {END_TAG.decode()} yet "
            f"({file_size} bytes; still being written?)"
        )
    marker = head.find(DATA_MARKER, end)
    gap = head[end + len(END_TAG) : marker if marker >= 0 else len(head)]
    if marker < 0 or gap.strip(b"\r\n") != b"":
        if marker < 0 and len(gap) < 8 and gap.strip(b"\r\n") == b"":
            raise ScanIncompleteError(
                f"{name}: file ends right after {END_TAG.decode()} (still being written?)"
            )
        raise ScanReadError(
            f"{name}: the \\x1a\\x04 data marker after {END_TAG.decode()} is missing or corrupt"
        )
    data_offset = marker + len(DATA_MARKER)

    header_text = head[: end + len(END_TAG)].decode(HEADER_ENCODING, errors="replace")
    header_text = header_text.replace("\r\n", "\n")
    tags = header_tags(header_text)

    pixels = (tags.get("SCAN_PIXELS") or "").split()
    try:
        nx, ny = (int(p) for p in pixels[:2])
        if len(pixels) != 2:
            raise ValueError
    except ValueError:
        raise ScanReadError(
            f"{name}: SCAN_PIXELS is {tags.get('SCAN_PIXELS')!r}, expected two integers 'nx ny'"
        ) from None
    if not (0 < nx <= MAX_PIXELS_PER_SIDE and 0 < ny <= MAX_PIXELS_PER_SIDE):
        raise ScanReadError(
            f"{name}: SCAN_PIXELS {nx} x {ny} is out of range (1..{MAX_PIXELS_PER_SIDE} per side)"
        )

    rows = parse_table(tags.get("DATA_INFO", ""))
    channels: list[ChannelInfo] = []
    for row in rows:
        direction = row.get("Direction", "").lower()
        if not row.get("Name") or direction not in ("both", "forward", "backward"):
            raise ScanReadError(
                f"{name}: DATA_INFO row {row} has no name or an unknown "
                "direction (expected both|forward|backward)"
            )
        channels.append(ChannelInfo(row["Name"], row.get("Unit", ""), direction))
    if not channels:
        raise ScanReadError(f"{name}: DATA_INFO lists no channels")

    layout = SxmLayout(str(path), header_text, data_offset, nx, ny, tuple(channels), file_size)
    if file_size < layout.expected_size:
        raise ScanIncompleteError(
            f"{name}: data is {file_size - data_offset} bytes, header promises "
            f"{layout.expected_size - data_offset} ({nx}x{ny} px, {layout.blocks} blocks; "
            "still being written?)"
        )
    if file_size > layout.expected_size:
        log.warning(
            "%s: %d trailing bytes after the data ignored", name, file_size - layout.expected_size
        )
    return layout


def read_blocks(layout: SxmLayout, channel: str) -> dict[str, np.ndarray]:
    """Raw blocks of one channel as stored: ``{"forward"|"backward": (ny, nx) float32}``.

    Native float32, acquisition orientation (not yet flipped or un-mirrored).
    """
    index = 0
    block = layout.nx * layout.ny
    for ch in layout.channels:
        directions = ["forward", "backward"] if ch.direction == "both" else [ch.direction]
        if ch.name == channel:
            out: dict[str, np.ndarray] = {}
            try:
                with open(layout.path, "rb") as fh:
                    fh.seek(layout.data_offset + index * block * 4)
                    raw = fh.read(len(directions) * block * 4)
            except OSError as exc:
                raise ScanReadError(
                    f"{Path(layout.path).name}: cannot read data ({exc.strerror or exc})"
                ) from exc
            if len(raw) < len(directions) * block * 4:
                raise ScanIncompleteError(
                    f"{Path(layout.path).name}: file shrank while being read (still being written?)"
                )
            values = np.frombuffer(raw, dtype=">f4").astype(np.float32)
            for k, d in enumerate(directions):
                out[d] = values[k * block : (k + 1) * block].reshape(layout.ny, layout.nx)
            return out
        index += len(directions)
    raise ScanReadError(f"{Path(layout.path).name}: no channel {channel!r}")


def _fmt(value: float) -> str:
    return f"{value:.6E}"


def write_sxm(
    path: str | os.PathLike[str],
    *,
    images: Mapping[tuple[str, str], np.ndarray],
    units: Mapping[str, str],
    width_m: float,
    height_m: float,
    scan_dir: str = "down",
    angle_deg: float = 0.0,
    offset_m: tuple[float, float] = (0.0, 0.0),
    bias_v: float = -1.4,
    setpoint_a: float = 60e-12,
    constant_height: bool = False,
    rec_date: str = "18.11.2021",
    rec_time: str = "12:00:00",
    line_time_s: float = 0.5,
    comment: Sequence[str] = (),
    extra_tags: Mapping[str, str] | None = None,
) -> int:
    """Write a Nanonis-style `.sxm` file; returns its size in bytes.

    ``images`` maps ``(channel name, "forward"|"backward")`` to ``(ny, nx)`` arrays oriented
    as displayed (row 0 = top of frame, backward already un-mirrored); they are stored in
    acquisition order, as the instrument does (up scans bottom line first, backward lines
    right-to-left). Channels appear in insertion order; a channel with both directions is
    written as ``both``.
    """
    names: list[str] = []
    for chan, _d in images:
        if chan not in names:
            names.append(chan)
    shapes = {a.shape for a in images.values()}
    if len(shapes) != 1:
        raise ValueError(f"all images must share one shape, got {shapes}")
    ny, nx = shapes.pop()

    channel_codes = {"Z": 14, "Current": 0}
    rows = ["\tChannel\tName\tUnit\tDirection\tCalibration\tOffset"]
    blocks: list[np.ndarray] = []
    for i, chan in enumerate(names):
        dirs = [d for d in ("forward", "backward") if (chan, d) in images]
        direction = "both" if len(dirs) == 2 else dirs[0]
        code = channel_codes.get(chan, 20 + i)
        rows.append(f"\t{code}\t{chan}\t{units.get(chan, '')}\t{direction}\t1.000E+0\t0.000E+0")
        for d in dirs:
            img = np.asarray(images[(chan, d)], dtype=np.float32)
            if scan_dir == "up":
                img = img[::-1]
            if d == "backward":
                img = img[:, ::-1]
            blocks.append(img)

    tags: list[tuple[str, str]] = [
        ("NANONIS_VERSION", "2"),
        ("SCANIT_TYPE", "              FLOAT            MSBFIRST"),
        ("REC_DATE", f" {rec_date}"),
        ("REC_TIME", rec_time),
        ("REC_TEMP", "      290.0000000000"),
        ("ACQ_TIME", f"{2 * line_time_s * ny:12.1f}"),
        ("SCAN_PIXELS", f"{nx:10d}{ny:10d}"),
        ("SCAN_FILE", str(Path(path).name)),
        ("SCAN_TIME", f"{line_time_s:21.3E}{line_time_s:21.3E}"),
        ("SCAN_RANGE", f"{width_m:22.6E}{height_m:22.6E}"),
        ("SCAN_OFFSET", f"{offset_m[0]:22.6E}{offset_m[1]:22.6E}"),
        ("SCAN_ANGLE", f"{angle_deg:20.3E}"),
        ("SCAN_DIR", scan_dir),
        ("BIAS", f"{bias_v:20.3E}"),
        (
            "Z-CONTROLLER",
            "\tName\ton\tSetpoint\tP-gain\tI-gain\tT-const\n"
            f"\tlog Current\t{0 if constant_height else 1}\t{setpoint_a:.3E} A"
            "\t7.000E-11 m\t7.000E-8 m/s\t1.000E-3 s",
        ),
        ("COMMENT", "\n".join(comment)),
        ("NanonisMain>SW Version", "Generic 4"),
        ("Bias>Bias (V)", _fmt(bias_v)),
        ("Current>Current (A)", _fmt(setpoint_a)),
        ("Z-Controller>Controller status", "OFF" if constant_height else "ON"),
        ("Z-Controller>Setpoint", _fmt(setpoint_a)),
        ("Z-Controller>Setpoint unit", "A"),
        ("Scan>channels", ";".join(f"{n} ({units.get(n, '')})" for n in names)),
        ("Scan>pixels/line", str(nx)),
        ("Scan>lines", str(ny)),
    ]
    tags.extend((extra_tags or {}).items())
    text = "".join(f":{k}:\n{v}\n" for k, v in tags)
    text += ":DATA_INFO:\n" + "\n".join(rows) + "\n\n"
    header = text.encode(HEADER_ENCODING, errors="replace") + END_TAG + b"\n\n\n" + DATA_MARKER
    payload = b"".join(b.astype(">f4").tobytes() for b in blocks)
    tmp = Path(f"{path}.part")
    with open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(payload)
    os.replace(tmp, path)
    return len(header) + len(payload)


def finite_or_none(value: float | None) -> float | None:
    """None for None, NaN and +-Inf; the value otherwise."""
    return value if value is not None and math.isfinite(value) else None
