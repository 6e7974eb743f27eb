"""File names of the supported scan formats (no imports: the CLI and the daemon's defaults use
it without loading any reader)."""

from __future__ import annotations

import os

# lower-case name endings per format id (see defectwatch.pipeline.readers.FORMATS)
SUFFIXES: dict[str, tuple[str, ...]] = {
    "nanonis-sxm": (".sxm",),
    "rhk-sm4": (".sm4",),
    "omicron-matrix": ("_mtrx",),
    "createc-dat": (".dat",),
    "gwyddion-gwy": (".gwy",),
}

# MATRIX writes one file per channel; the default watch pattern takes its Z channel files
SCAN_PATTERNS: tuple[str, ...] = ("*.sxm", "*.sm4", "*.z_mtrx", "*.dat", "*.gwy")
DEFAULT_PATTERN = ",".join(SCAN_PATTERNS)


def is_scan_name(name: str | os.PathLike[str]) -> bool:
    """True for a name ending like a supported format (``.sxm``, ``.sm4``, ``*_mtrx``,
    ``.dat``, ``.gwy``; any case). ``_0001.mtrx`` chain files are not scans."""
    lower = os.path.basename(os.fspath(name)).lower()
    return any(lower.endswith(s) for group in SUFFIXES.values() for s in group)
