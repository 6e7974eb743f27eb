"""Every supported scan-file format behind one `read_scan`.

=================  ===================  =============================  ==========================
format             names                parsed by                      complete when
=================  ===================  =============================  ==========================
Nanonis .sxm       ``*.sxm``            nanonispy2 (header) + ours     size = header promise
RHK .sm4           ``*.sm4``            spym's SM4 parser              size stable, spym parses
Omicron MATRIX     ``*.Z_mtrx`` (any    access2theMatrix               chain file ``_0001.mtrx``
                   ``*_mtrx``)                                         beside it, size stable
Createc .dat       ``*.dat``            ours (``readers.createc``)     zlib stream complete
Gwyddion .gwy      ``*.gwy``            gwyfile                        size = header promise
=================  ===================  =============================  ==========================

`detect_format` decides by content (magic bytes) first; when no format's magic matches, the
format the name ending says is asked, so its reader names what is wrong in its own terms.
``expected_size(path)`` is the daemon's completeness rule for any format.
"""

from __future__ import annotations

import os
from pathlib import Path

from defectwatch.domain import Scan
from defectwatch.errors import NotAnImageError, ScanIncompleteError, ScanReadError
from defectwatch.pipeline.readers import createc, gwyddion, matrix, rhk_sm4
from defectwatch.pipeline.readers.base import HEAD_BYTES, ScanFormat, file_head
from defectwatch.pipeline.scan_names import DEFAULT_PATTERN, SCAN_PATTERNS, SUFFIXES, is_scan_name

__all__ = [
    "FORMATS",
    "SCAN_PATTERNS",
    "DEFAULT_PATTERN",
    "NotAnImageError",
    "ScanFormat",
    "detect_format",
    "expected_size",
    "read_scan",
    "is_scan_name",
]


def _read_sxm(
    path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward"
) -> Scan:
    from defectwatch.pipeline.scan import read_sxm

    return read_sxm(path, channel=channel, direction=direction)


def _sxm_expected_size(path: str) -> int | None:
    from defectwatch.pipeline.sxm import read_layout

    try:
        return read_layout(path).expected_size
    except ScanIncompleteError:
        return None


def _sniff_sxm(head: bytes) -> bool:
    return head.startswith(b":NANONIS_VERSION:")


FORMATS: tuple[ScanFormat, ...] = (
    ScanFormat(
        "nanonis-sxm",
        "Nanonis .sxm",
        SUFFIXES["nanonis-sxm"],
        _sniff_sxm,
        _read_sxm,
        _sxm_expected_size,
        "nanonispy2 1.2.0 (header) + defectwatch (data blocks)",
        "the size its header promises",
    ),
    ScanFormat(
        "rhk-sm4",
        "RHK Technology .sm4",
        SUFFIXES["rhk-sm4"],
        rhk_sm4.sniff,
        rhk_sm4.read,
        rhk_sm4.expected_size,
        "spym 0.9.2 (its SM4 parser module only)",
        "size stable and spym parses it; spectra-only files are skipped",
    ),
    ScanFormat(
        "omicron-matrix",
        "Scienta Omicron MATRIX",
        SUFFIXES["omicron-matrix"],
        matrix.sniff,
        matrix.read,
        matrix.expected_size,
        "access2theMatrix 0.4.4",
        "its result chain file <name>_0001.mtrx is beside it, size stable",
    ),
    ScanFormat(
        "createc-dat",
        "Createc .dat",
        SUFFIXES["createc-dat"],
        createc.sniff,
        createc.read,
        createc.expected_size,
        "defectwatch (no maintained reader exists)",
        "its zlib stream is complete",
    ),
    ScanFormat(
        "gwyddion-gwy",
        "Gwyddion .gwy",
        SUFFIXES["gwyddion-gwy"],
        gwyddion.sniff,
        gwyddion.read,
        gwyddion.expected_size,
        "gwyfile 0.3.0",
        "the size its top-level object declares",
    ),
)


def _by_name(path: str | os.PathLike[str]) -> ScanFormat | None:
    lower = Path(path).name.lower()
    return next((f for f in FORMATS if lower.endswith(f.suffixes)), None)


def detect_format(path: str | os.PathLike[str], *, head: bytes | None = None) -> ScanFormat:
    """The format of a file: by its first bytes, else (too short to tell yet) by its name.

    ScanIncompleteError for a file too short to tell whose name is a scan's; ScanReadError
    naming the supported formats otherwise."""
    name = Path(path).name
    head = file_head(path, HEAD_BYTES) if head is None else head
    for fmt in FORMATS:
        if fmt.sniff(head):
            return fmt
    if not head:
        raise ScanIncompleteError(f"{name}: file is empty (still being written?)")
    if head.startswith(b"Experiment\t") or head.startswith(b"[DATA]"):
        raise NotAnImageError(f"{name}: a Nanonis spectrum, no image in this file")
    by_name = _by_name(path)
    if by_name is not None:
        return by_name  # its reader says what is wrong with the content, in its terms
    raise ScanReadError(
        f"{name}: not a scan file; supported: " + ", ".join(f.title for f in FORMATS)
    )


def read_scan(
    path: str | os.PathLike[str], *, channel: str = "Z", direction: str = "forward"
) -> Scan:
    """Read one channel and direction of any supported scan file into a `Scan`.

    Native float32 in SI units, row 0 = top of the frame as Gwyddion shows it, backward
    images un-mirrored, NaN rows where the scan was not acquired. Raises `ScanIncompleteError`
    for a file not yet complete (retry later), `NotAnImageError` for a file without an image
    and `ScanReadError` for anything else wrong with it; nothing else escapes.
    """
    return detect_format(path).read(path, channel=channel, direction=direction)


def expected_size(path: str) -> int | None:
    """Bytes a scan file will have once complete, by its format's rule; None while it is
    still incomplete. Raises ScanReadError (or NotAnImageError) for a file that is no scan,
    ScanIncompleteError with a reason when it waits for something else (a MATRIX chain file).
    """
    try:
        fmt = detect_format(path)
    except ScanIncompleteError:
        return None
    return fmt.expected_size(path)
