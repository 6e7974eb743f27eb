"""Frozen dataclasses that every layer shares.

Conventions: units in names (``_nm``, ``_nm2``, ``_v``, ``_a``, ``_k``, ``_deg``); pixel
coordinates are ``(row, col)`` with row 0 = top of the frame as Gwyddion shows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

#: The defect kinds the shipped models find, in class order. A model version's ``config.json``
#: lists its own ``classes`` (background first); these are the default and what the record,
#: the label formats and the reports count.
KINDS: tuple[str, ...] = ("trough", "peak")
#: The U-Net's output classes: background, then the kinds.
CLASSES: tuple[str, ...] = ("background", *KINDS)
#: One defect as a table row, in order (``defects --csv``, the Python API's defect frames).
DEFECT_TABLE_COLUMNS: tuple[str, ...] = (
    "row",
    "col",
    "x_nm",
    "y_nm",
    "kind",
    "confidence",
    "uncertainty",
    "area_nm2",
    "contrast",
)


@dataclass(frozen=True)
class ChannelInfo:
    """One recorded channel of a scan file (a row of the `.sxm` DATA_INFO table, a page of an
    `.sm4`, ...); ``unit`` is "" where the file does not say."""

    name: str
    unit: str
    direction: str  # "both" | "forward" | "backward"


@dataclass(frozen=True, eq=False)
class Scan:
    """One image channel of one scan file, oriented and in SI units.

    ``data`` has shape ``(ny, nx)``, native float32, row 0 = top of the frame (up scans are
    flipped, backward images un-mirrored); rows that were not acquired (aborted scans) are NaN
    and ``acquired_rows`` is False for them.
    """

    path: str
    channel: str
    direction: str  # "forward" | "backward"
    unit: str
    data: np.ndarray  # (ny, nx) float32, SI units (m for Z, A for Current)
    acquired_rows: np.ndarray  # (ny,) bool
    width_nm: float
    height_nm: float
    scan_dir: str  # "up" | "down" | "unknown" (e.g. a processed .gwy file does not say)
    angle_deg: float
    offset_x_nm: float
    offset_y_nm: float
    recorded_at: datetime | None
    bias_v: float | None
    setpoint_a: float | None
    constant_height: bool
    temperature_k: float | None
    comment: str
    channels: tuple[ChannelInfo, ...]
    header: dict[str, str] = field(default_factory=dict, repr=False)
    file_format: str = "nanonis-sxm"  # the reader's format id (see pipeline.readers)

    @property
    def ny(self) -> int:
        """Lines (rows) in the frame."""
        return int(self.data.shape[0])

    @property
    def nx(self) -> int:
        """Pixels per line (columns)."""
        return int(self.data.shape[1])

    @property
    def pixel_size_x_nm(self) -> float:
        """Width of one pixel along the fast axis, nm."""
        return self.width_nm / self.nx

    @property
    def pixel_size_y_nm(self) -> float:
        """Height of one pixel along the slow axis, nm."""
        return self.height_nm / self.ny

    @property
    def acquired_fraction(self) -> float:
        """Share of lines that hold data (0 for an all-NaN aborted scan)."""
        return float(np.count_nonzero(self.acquired_rows)) / self.ny if self.ny else 0.0

    @property
    def acquired_area_nm2(self) -> float:
        """Area actually scanned, nm^2 (frame area x acquired fraction)."""
        return self.width_nm * self.height_nm * self.acquired_fraction

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)


@dataclass(frozen=True)
class Defect:
    """One detected defect. ``row, col``: float pixels of the oriented scan (row 0 = top);
    ``x_nm, y_nm``: the same point from the frame's top-left corner; ``confidence``: the
    ensemble's mean class probability at the defect (0-1); ``uncertainty``: the members' mean
    standard deviation over the defect's pixels; ``area_nm2``: the thresholded blob's area;
    ``contrast``: how far it stands out of the flattened topography, in noise sigmas of the
    ring around it (`pipeline.contrast`; negative for troughs; NaN where not measured, e.g.
    C-AFM current maps or a ring off the frame)."""

    row: float
    col: float
    x_nm: float
    y_nm: float
    kind: str  # "trough" | "peak"
    confidence: float
    uncertainty: float
    area_nm2: float
    contrast: float = math.nan


@dataclass(frozen=True)
class Density:
    """Defects of one kind per area, with an exact (Garwood) 95% Poisson interval."""

    kind: str  # "trough" | "peak" | "total"
    count: int
    area_nm2: float
    per_cm2: float
    ci95_low_per_cm2: float
    ci95_high_per_cm2: float


@dataclass(frozen=True)
class Detection:
    """One scan run through one model version: what gets recorded.

    ``area_nm2``: the acquired area the densities are computed over; ``densities``: keyed
    ``trough``, ``peak``, ``total``; ``seconds``: wall time of the whole run (read to defects);
    ``near_threshold_nm2``: area where a defect class's mean probability lay near the
    threshold (the ensemble on the fence; `pipeline.detect.near_threshold_area_nm2`), None when
    not measured.
    """

    model_version: str
    defects: tuple[Defect, ...]
    densities: dict[str, Density]
    area_nm2: float
    started_at: datetime
    seconds: float
    near_threshold_nm2: float | None = None


@dataclass(frozen=True)
class Job:
    """A scan file in the durable job queue (see ``defectwatch.daemon.ports.JobQueue``).

    ``attempts`` counts claims so far, this one included; ``sample`` is the sample name the
    queue resolved for the file (None when no rule matched).
    """

    id: int
    path: str
    sha256: str
    attempts: int
    sample: str | None = None
