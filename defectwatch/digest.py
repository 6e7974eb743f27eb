"""The one sha256 helper: a file's content hash, read in chunks (memory stays flat).

Used by the watcher (the queue's duplicate check), the record (a scan's identity) and model
versions (each member's hash in ``config.json``). Only the standard library: every layer may
import it.
"""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file's content.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    chunk_bytes : int, optional
        Read size, bytes (default 1 MiB).

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
