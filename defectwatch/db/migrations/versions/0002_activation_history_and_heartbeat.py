"""Model activation history (for rollback) and the daemon heartbeat.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_activation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("activated_at", UTC_TIME, nullable=False),
        sa.Column("rolled_back_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_version.id"],
            name=op.f("fk_model_activation_model_version_id_model_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_activation")),
    )
    op.create_index(
        op.f("ix_model_activation_model_version_id"), "model_activation", ["model_version_id"]
    )
    # versions already active before this revision get a first history entry
    op.execute(
        "INSERT INTO model_activation (model_version_id, activated_at) "
        "SELECT id, created_at FROM model_version WHERE active"
    )

    op.create_table(
        "daemon_heartbeat",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("beat_at", UTC_TIME, nullable=False),
        sa.Column("stopped_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemon_heartbeat")),
    )
    op.create_index(op.f("ix_daemon_heartbeat_beat_at"), "daemon_heartbeat", ["beat_at"])


def downgrade() -> None:
    op.drop_table("daemon_heartbeat")
    op.drop_table("model_activation")
