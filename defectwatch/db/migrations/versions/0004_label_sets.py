"""Label sets: one scan's labels from one source, with its exhaustive flag (also when empty).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "label_set",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("exhaustive", sa.Boolean(), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.Column("file", sa.Text(), nullable=True),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scan.id"], name=op.f("fk_label_set_scan_id_scan"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_set")),
        sa.UniqueConstraint("scan_id", "source", name="uq_label_set_scan_source"),
    )
    op.create_index(op.f("ix_label_set_scan_id"), "label_set", ["scan_id"])
    # labels written before this revision get their set (exhaustive when any row said so)
    op.execute(
        "INSERT INTO label_set (scan_id, source, exhaustive, labels, updated_at) "
        "SELECT scan_id, source, MAX(CASE WHEN exhaustive THEN 1 ELSE 0 END) = 1, COUNT(*), "
        "MAX(created_at) FROM label GROUP BY scan_id, source"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_label_set_scan_id"), table_name="label_set")
    op.drop_table("label_set")
