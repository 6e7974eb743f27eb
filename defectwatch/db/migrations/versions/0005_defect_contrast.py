"""Each defect's contrast: how far it stands out of the flattened topography, in ring-noise
sigmas (NULL where not measured: C-AFM current maps, runs recorded before this revision).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("defect") as batch:
        batch.add_column(sa.Column("contrast", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("defect") as batch:
        batch.drop_column("contrast")
