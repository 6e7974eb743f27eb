"""What the review queue ranks by, kept per detection run: the summed uncertainty (member
spread) of its defects, and the area where the ensemble's mean probability sat near its
threshold (NULL for runs recorded before this revision: the queue then counts the defects
only). An index on ``label_set.source`` finds reviewed scans.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("detection_run") as batch:
        batch.add_column(sa.Column("uncertainty_sum", sa.Float(), nullable=True))
        batch.add_column(sa.Column("near_threshold_nm2", sa.Float(), nullable=True))
    # runs recorded before: the sum from their defects (the near-threshold area is not known)
    op.execute(
        "UPDATE detection_run SET uncertainty_sum = (SELECT COALESCE(SUM(d.uncertainty), "
        "0) FROM defect d WHERE d.run_id = detection_run.id)"
    )
    op.create_index(op.f("ix_label_set_source"), "label_set", ["source", "scan_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_label_set_source"), table_name="label_set")
    with op.batch_alter_table("detection_run") as batch:
        batch.drop_column("near_threshold_nm2")
        batch.drop_column("uncertainty_sum")
