"""The frozen train/test split of labelled scans (one row per scan, assigned once).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "split_assignment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=8), nullable=False),
        sa.Column("assigned_at", UTC_TIME, nullable=False),
        sa.CheckConstraint("split IN ('train', 'test')", name=op.f("ck_split_assignment_split")),
        sa.ForeignKeyConstraint(
            ["scan_id"],
            ["scan.id"],
            name=op.f("fk_split_assignment_scan_id_scan"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_split_assignment")),
        sa.UniqueConstraint("scan_id", name=op.f("uq_split_assignment_scan_id")),
    )


def downgrade() -> None:
    op.drop_table("split_assignment")
