"""The schema: SQLAlchemy 2 typed declarative models, singular table names.

Timestamps we make are UTC (``UTCDateTime``: aware in Python, stored as UTC on SQLite and as
``timestamptz`` on PostgreSQL). ``scan.recorded_at`` is the instrument's clock as the file header
gives it (naive). Areas in nm^2, lengths in nm, bias in V, setpoint in A, sizes in bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

STATUSES = ("queued", "processing", "done", "failed")

# Stable constraint names, so Alembic can alter them later on every dialect.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC instant: aware datetimes in and out (naive input is taken as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite stores text: drop the offset so every value has one sortable format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Sample(Base):
    """A physical sample; scans are grouped under it by the configured sample rule."""

    __tablename__ = "sample"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScanRow(Base):
    """One scan file (unique by content) and its job state in the queue."""

    __tablename__ = "scan"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'processing', 'done', 'failed')", name="status"),
        Index("ix_scan_status_not_before", "status", "not_before"),
        Index("ix_scan_path", "path"),
        Index("ix_scan_sample_status", "sample_id", "status"),
        Index("ix_scan_instrument_status", "instrument", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("sample.id", ondelete="SET NULL"))
    # the microscope it came from (``--instrument``, default the recording host's name)
    instrument: Mapped[str | None] = mapped_column(String(200))
    # file identity (cheap "seen it?" check before hashing)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    # metadata from the header (what `defectwatch inspect --json` shows); NULL until read
    recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    channel: Mapped[str | None] = mapped_column(String(64))
    nx: Mapped[int | None]
    ny: Mapped[int | None]
    width_nm: Mapped[float | None] = mapped_column(Float)
    height_nm: Mapped[float | None] = mapped_column(Float)
    pixel_size_x_nm: Mapped[float | None] = mapped_column(Float)
    pixel_size_y_nm: Mapped[float | None] = mapped_column(Float)
    angle_deg: Mapped[float | None] = mapped_column(Float)
    bias_v: Mapped[float | None] = mapped_column(Float)
    setpoint_a: Mapped[float | None] = mapped_column(Float)
    constant_height: Mapped[bool | None]
    temperature_k: Mapped[float | None] = mapped_column(Float)
    acquired_fraction: Mapped[float | None] = mapped_column(Float)
    acquired_area_nm2: Mapped[float | None] = mapped_column(Float)
    scan_dir: Mapped[str | None] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text)
    # job state
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    not_before: Mapped[datetime | None]  # retry backoff: not claimable before this instant
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    sample: Mapped[Sample | None] = relationship()


class DetectionRun(Base):
    """One scan run through one model version; densities are recomputed from the counts."""

    __tablename__ = "detection_run"
    __table_args__ = (Index("ix_detection_run_scan_id", "scan_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(200), index=True)  # a version's name
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    seconds: Mapped[float] = mapped_column(Float)
    area_nm2: Mapped[float] = mapped_column(Float)  # acquired area the counts are over
    trough_count: Mapped[int] = mapped_column(Integer)
    peak_count: Mapped[int] = mapped_column(Integer)
    defect_count: Mapped[int] = mapped_column(Integer)  # all kinds
    # the review queue's evidence: summed member spread of the defects, and the area (nm^2)
    # where a defect class's mean probability was near the threshold (None: not measured)
    uncertainty_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    near_threshold_nm2: Mapped[float | None] = mapped_column(Float, nullable=True)


class DefectRow(Base):
    """One detected defect of a run (see ``defectwatch.domain.Defect`` for the fields)."""

    __tablename__ = "defect"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("detection_run.id", ondelete="CASCADE"), index=True
    )
    row: Mapped[float] = mapped_column(Float)
    col: Mapped[float] = mapped_column(Float)
    x_nm: Mapped[float] = mapped_column(Float)
    y_nm: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    uncertainty: Mapped[float] = mapped_column(Float)
    area_nm2: Mapped[float] = mapped_column(Float)
    contrast: Mapped[float | None] = mapped_column(Float, nullable=True)  # NaN -> NULL


class ModelVersion(Base):
    """A model version directory in the registry; exactly one is active once any exists."""

    __tablename__ = "model_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    directory: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    parent: Mapped[str | None] = mapped_column(String(200))  # the parent version's name
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    members: Mapped[int] = mapped_column(Integer, default=0)


# At most one active version, enforced by the database itself (a partial unique index).
Index(
    "uq_model_version_active",
    ModelVersion.active,
    unique=True,
    sqlite_where=ModelVersion.active,
    postgresql_where=ModelVersion.active,
)


class ModelActivation(Base):
    """The activation history: a stack; ``rollback`` pops the top entry."""

    __tablename__ = "model_activation"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE"), index=True
    )
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
    rolled_back_at: Mapped[datetime | None]


class Label(Base):
    """A labelled defect position on a scan (filled by the labels issue)."""

    __tablename__ = "label"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan.id", ondelete="CASCADE"), index=True)
    row: Mapped[float] = mapped_column(Float)
    col: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    radius_nm: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(200))  # e.g. "via:file.json", "review:alice"
    exhaustive: Mapped[bool] = mapped_column(Boolean, default=False)  # every defect labelled
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelSet(Base):
    """The labels of one scan from one source (a label file, or accepted detections).

    ``label`` rows with the same ``(scan_id, source)`` belong to it and carry its
    ``exhaustive`` flag. It exists even when it holds no label, so a scan labelled as clean
    (exhaustive, zero defects) is known. A scan is exhaustively labelled when any of its sets is.
    """

    __tablename__ = "label_set"
    __table_args__ = (
        UniqueConstraint("scan_id", "source", name="uq_label_set_scan_source"),
        Index("ix_label_set_source", "source", "scan_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(200))  # e.g. "via:labels.csv", "accepted"
    exhaustive: Mapped[bool] = mapped_column(Boolean, default=False)
    labels: Mapped[int] = mapped_column(Integer, default=0)  # label rows it holds
    file: Mapped[str | None] = mapped_column(Text)  # the file imported (None: not a file)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DaemonHeartbeat(Base):
    """A running `watch` process; ``beat_at`` is refreshed while it lives."""

    __tablename__ = "daemon_heartbeat"

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    instrument: Mapped[str | None] = mapped_column(String(200))  # the one it records for
    started_at: Mapped[datetime]
    beat_at: Mapped[datetime] = mapped_column(index=True)
    stopped_at: Mapped[datetime | None]


class SplitAssignment(Base):
    """A labelled scan's frozen split (``train`` | ``test``): assigned once, never changed, so
    every model version is compared on the same test scans (see ``db.splits``)."""

    __tablename__ = "split_assignment"
    __table_args__ = (CheckConstraint("split IN ('train', 'test')", name="split"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scan.id", ondelete="CASCADE"), unique=True)
    split: Mapped[str] = mapped_column(String(8))
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetrainRun(Base):
    """One `defectwatch retrain` run and its outcome: ``promoted`` (the candidate became
    active), ``candidate`` (kept out; ``reason`` says why), ``skipped`` (no label changed since
    the active version was trained), ``failed`` (``reason``: the error)."""

    __tablename__ = "retrain_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))
    version: Mapped[str | None] = mapped_column(String(200))  # the candidate (None: none made)
    parent: Mapped[str | None] = mapped_column(String(200))  # the active version it started from
    recipe: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    labels_fingerprint: Mapped[str | None] = mapped_column(String(64))
    seconds: Mapped[float | None] = mapped_column(Float)
