"""The record: samples, scans (with their job state), detection runs, defects, model versions,
labels.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sample",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sample")),
        sa.UniqueConstraint("name", name=op.f("uq_sample_name")),
    )
    op.create_table(
        "scan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=True),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("nx", sa.Integer(), nullable=True),
        sa.Column("ny", sa.Integer(), nullable=True),
        sa.Column("width_nm", sa.Float(), nullable=True),
        sa.Column("height_nm", sa.Float(), nullable=True),
        sa.Column("pixel_size_x_nm", sa.Float(), nullable=True),
        sa.Column("pixel_size_y_nm", sa.Float(), nullable=True),
        sa.Column("angle_deg", sa.Float(), nullable=True),
        sa.Column("bias_v", sa.Float(), nullable=True),
        sa.Column("setpoint_a", sa.Float(), nullable=True),
        sa.Column("constant_height", sa.Boolean(), nullable=True),
        sa.Column("temperature_k", sa.Float(), nullable=True),
        sa.Column("acquired_fraction", sa.Float(), nullable=True),
        sa.Column("acquired_area_nm2", sa.Float(), nullable=True),
        sa.Column("scan_dir", sa.String(length=8), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.Column("not_before", UTC_TIME, nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'done', 'failed')", name=op.f("ck_scan_status")
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["sample.id"], name=op.f("fk_scan_sample_id_sample"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan")),
        sa.UniqueConstraint("sha256", name=op.f("uq_scan_sha256")),
    )
    op.create_index("ix_scan_path", "scan", ["path"])
    op.create_index("ix_scan_sample_status", "scan", ["sample_id", "status"])
    op.create_index("ix_scan_status_not_before", "scan", ["status", "not_before"])

    op.create_table(
        "detection_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("area_nm2", sa.Float(), nullable=False),
        sa.Column("trough_count", sa.Integer(), nullable=False),
        sa.Column("peak_count", sa.Integer(), nullable=False),
        sa.Column("defect_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scan.id"], name=op.f("fk_detection_run_scan_id_scan"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detection_run")),
    )
    op.create_index(op.f("ix_detection_run_finished_at"), "detection_run", ["finished_at"])
    op.create_index(op.f("ix_detection_run_model_version"), "detection_run", ["model_version"])
    op.create_index("ix_detection_run_scan_id", "detection_run", ["scan_id", "id"])

    op.create_table(
        "defect",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("row", sa.Float(), nullable=False),
        sa.Column("col", sa.Float(), nullable=False),
        sa.Column("x_nm", sa.Float(), nullable=False),
        sa.Column("y_nm", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("uncertainty", sa.Float(), nullable=False),
        sa.Column("area_nm2", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["detection_run.id"],
            name=op.f("fk_defect_run_id_detection_run"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_defect")),
    )
    op.create_index(op.f("ix_defect_run_id"), "defect", ["run_id"])

    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("directory", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("parent", sa.String(length=200), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("name", name=op.f("uq_model_version_name")),
    )
    op.create_index(
        "uq_model_version_active",
        "model_version",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )

    op.create_table(
        "label",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("row", sa.Float(), nullable=False),
        sa.Column("col", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("radius_nm", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("exhaustive", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scan.id"], name=op.f("fk_label_scan_id_scan"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label")),
    )
    op.create_index(op.f("ix_label_scan_id"), "label", ["scan_id"])


def downgrade() -> None:
    for table in ("label", "model_version", "defect", "detection_run", "scan", "sample"):
        op.drop_table(table)
