"""Which files in a watched folder may be scans: the name pattern, hidden and temporary files.

Only names are judged here (no I/O except walking a folder); whether a file is complete is
`defectwatch.daemon.readiness`'s business.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

# Suffixes that copy tools, browsers and editors give files while they are being written.
TEMP_SUFFIXES = (
    ".part",
    ".partial",
    ".tmp",
    ".temp",
    ".crdownload",
    ".download",
    ".filepart",
    ".swp",
    ".swx",
    ".bak",
    ".!sync",
    ".opdownload",
    "~",
)


def is_temporary(name: str) -> bool:
    """True for hidden (``.x``), Office/editor lock (``~$x``, ``~x``) and partial-copy names."""
    lower = name.lower()
    return lower.startswith((".", "~")) or lower.endswith(TEMP_SUFFIXES)


def matches(name: str, pattern: str) -> bool:
    """Case-insensitive glob match of a file name (``*.sxm`` matches ``A.SXM``); ``pattern``
    may list several globs separated by commas (``*.sxm,*.sm4``)."""
    lower = name.lower()
    return any(
        fnmatch.fnmatchcase(lower, p.strip().lower()) for p in pattern.split(",") if p.strip()
    )


def is_candidate(path: str, *, root: str, pattern: str, recursive: bool) -> bool:
    """True when ``path`` lies in ``root`` (directly, or below it when ``recursive``), its name
    matches ``pattern``, and neither it nor a folder between it and ``root`` is hidden or
    temporary."""
    rel = os.path.relpath(path, root)
    if rel.startswith(os.pardir) or os.path.isabs(rel):
        return False
    parts = rel.split(os.sep)
    if len(parts) > 1 and not recursive:
        return False
    if any(is_temporary(p) for p in parts):
        return False
    return matches(parts[-1], pattern)


def walk_candidates(roots: Sequence[str], *, pattern: str, recursive: bool) -> Iterator[str]:
    """Absolute paths of candidate files under ``roots`` (hidden folders are not entered);
    unreadable folders are logged and skipped."""
    for root in roots:
        root = os.path.abspath(root)
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                log.warning("%s: cannot list the folder (%s)", folder, exc.strerror or exc)
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive and not is_temporary(entry.name):
                            stack.append(entry.path)
                    elif (
                        entry.is_file()
                        and not is_temporary(entry.name)
                        and matches(entry.name, pattern)
                    ):
                        yield entry.path
                except OSError:  # vanished or unreadable between listing and stat
                    continue
