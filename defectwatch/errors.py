"""The one exception hierarchy of defectwatch.

Every error a user can cause (a bad file, a missing model, a wrong option) is a
`DefectwatchError`; its message says what is wrong, naming the value, and how to fix it.
Boundaries translate them once: the CLI prints the message and exits 1; the worker retries
`ScanIncompleteError` and fails the job with the message of any other.
"""

from __future__ import annotations


class DefectwatchError(Exception):
    """Base of every error defectwatch raises on purpose."""


class ScanReadError(DefectwatchError):
    """A scan file is not a readable scan (corrupt, not a scan, unsupported)."""


class ScanIncompleteError(ScanReadError):
    """A scan file is shorter than its header promises: it may still be being written (retry)."""


class NotAnImageError(ScanReadError):
    """A scan file holds no image at all (e.g. an RHK .sm4 with spectra only): nothing to
    detect, nothing to record; the daemon skips it."""


class ModelLoadError(DefectwatchError):
    """A model version directory is missing, incomplete, or does not match its checksum."""


class DatabaseUnavailableError(DefectwatchError):
    """The database cannot be reached (its server is down or restarting, the network is away):
    nothing was recorded; try again later. The daemon waits with backoff and carries on."""


class NotFoundError(DefectwatchError):
    """A named thing (scan, sample, model version, channel) does not exist."""


class ConfigError(DefectwatchError):
    """A setting or option has a value that cannot work."""


class LabelFormatError(DefectwatchError):
    """A label file (VIA CSV, Pascal VOC, COCO, our CSV) is malformed: the message names the file
    and line (or element) and what was expected there."""
