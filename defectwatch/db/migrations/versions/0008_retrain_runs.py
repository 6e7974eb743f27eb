"""The nightly retrain's outcomes: one row per `defectwatch retrain` run (promoted, kept as a
candidate and why, skipped because no label changed, failed), with the labels it saw.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "retrain_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.Column("parent", sa.String(length=200), nullable=True),
        sa.Column("recipe", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("labels_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_run")),
    )
    op.create_index(op.f("ix_retrain_run_started_at"), "retrain_run", ["started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_retrain_run_started_at"), table_name="retrain_run")
    op.drop_table("retrain_run")
