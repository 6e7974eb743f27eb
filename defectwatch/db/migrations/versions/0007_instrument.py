"""The instrument each scan came from, and each daemon's instrument (several microscopes on one
database). NULL for scans and daemons recorded before this revision.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scan") as batch:
        batch.add_column(sa.Column("instrument", sa.String(length=200), nullable=True))
        batch.create_index("ix_scan_instrument_status", ["instrument", "status"])
    with op.batch_alter_table("daemon_heartbeat") as batch:
        batch.add_column(sa.Column("instrument", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_heartbeat") as batch:
        batch.drop_column("instrument")
    with op.batch_alter_table("scan") as batch:
        batch.drop_index("ix_scan_instrument_status")
        batch.drop_column("instrument")
