"""What every scan-file reader shares: the format record, channel choice and NaN rows.

A reader is a module with ``read(path, *, channel, direction) -> Scan`` and
``expected_size(path) -> int | None``, registered as a `ScanFormat` in
`defectwatch.pipeline.readers`. Every reader returns the same `Scan`: native float32 in SI
units, row 0 = top of the frame as Gwyddion shows it, backward images un-mirrored, rows that
were not acquired NaN; and raises only `ScanReadError` / `ScanIncompleteError` /
`NotAnImageError` (both subclasses of `ScanReadError`), whatever the file holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectwatch.domain import ChannelInfo, Scan
from defectwatch.errors import DefectwatchError, ScanReadError

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward")
HEAD_BYTES = 64  # enough of a file's start to tell every supported format apart

# what users call a channel -> names instruments give it (lower case)
ALIASES = {
    "z": ("z", "topography", "topo", "height", "z (m)", "z-axis"),
    "current": ("current", "i", "it", "i (a)", "tunneling current"),
}


@dataclass(frozen=True)
class ScanFormat:
    """One supported file format.

    ``sniff(head)`` tells the format from a file's first `HEAD_BYTES` bytes; ``suffixes`` are
    the lower-case name endings it is saved under (also the default watch pattern);
    ``completeness`` says in words how the daemon knows a file is complete.
    """

    name: str  # short id, e.g. "rhk-sm4"
    title: str  # e.g. "RHK Technology .sm4"
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    read: Callable[..., Scan]
    expected_size: Callable[[str], int | None]
    library: str  # what parses it
    completeness: str

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(f"*{s}" for s in self.suffixes)


def file_head(path: str | os.PathLike[str], n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of a file (ScanReadError when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise ScanReadError(
            f"{Path(path).name}: cannot read the file ({exc.strerror or exc})"
        ) from exc


def file_size(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise ScanReadError(
            f"{Path(path).name}: cannot read the file ({exc.strerror or exc})"
        ) from exc


def check_direction(name: str, direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ScanReadError(f"{name}: direction {direction!r} is not one of {DIRECTIONS}")


def pick_channel(name: str, available: Sequence[str], wanted: str) -> str:
    """The channel of ``available`` that ``wanted`` means: exact, then case-insensitive, then
    a known alias (``Z`` = Topography/Height, ``Current`` = I). ScanReadError naming the
    channels the file has otherwise."""
    if wanted in available:
        return wanted
    lower = {a.lower(): a for a in available}
    if wanted.lower() in lower:
        return lower[wanted.lower()]
    for aliases in ALIASES.values():
        if wanted.lower() in aliases:
            for alias in aliases:
                if alias in lower:
                    return lower[alias]
    have = ", ".join(available) if available else "none"
    raise ScanReadError(f"{name}: no channel {wanted!r}; it has {have} (choose one with --channel)")


def acquired_rows(data: np.ndarray) -> np.ndarray:
    """(ny,) bool: rows holding at least one finite value."""
    return np.isfinite(data).any(axis=1)


def as_image(data: np.ndarray, name: str) -> np.ndarray:
    """Native, C-contiguous float32 ``(ny, nx)``; ScanReadError for anything smaller than
    2 x 2 pixels."""
    with np.errstate(over="ignore", invalid="ignore"):  # a corrupt value: inf, never a warning
        out = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    if out.ndim != 2 or out.shape[0] < 2 or out.shape[1] < 2:
        raise ScanReadError(f"{name}: the image is {out.shape} pixels, not a 2-D frame")
    return out


def check_size_nm(name: str, width_nm: float, height_nm: float) -> None:
    if not (np.isfinite(width_nm) and np.isfinite(height_nm) and width_nm > 0 and height_nm > 0):
        raise ScanReadError(
            f"{name}: the frame size {width_nm} x {height_nm} nm is not a positive size"
        )


@contextmanager
def library_errors(name: str, library: str):
    """Turn anything a third-party parser raises on a bad file into ScanReadError.

    Our own errors pass through; MemoryError from a corrupt size field says so."""
    try:
        yield
    except DefectwatchError:
        raise
    except MemoryError:
        raise ScanReadError(
            f"{name}: {library} ran out of memory on it (a corrupt size field?)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a third-party parser on arbitrary bytes
        raise ScanReadError(
            f"{name}: {library} cannot parse it ({type(exc).__name__}: "
            f"{str(exc)[:200]}); is the file complete and of this "
            "format?"
        ) from exc


def channel_infos(
    names_units: Sequence[tuple[str, str]], directions: Sequence[str]
) -> tuple[ChannelInfo, ...]:
    """ChannelInfo per (name, unit), each recorded in ``directions`` ('both' for two)."""
    direction = (
        "both" if len(set(directions)) == 2 else (directions[0] if directions else "forward")
    )
    return tuple(ChannelInfo(n, u, direction) for n, u in names_units)
