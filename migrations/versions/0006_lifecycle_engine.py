"""lifecycle engine: control action, cancellable teardowns, capacity waits, moves

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 06:00:00
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
    op.add_column("vibeboxes", sa.Column("action", sa.String(length=16), nullable=True))
    op.add_column(
        "vibeboxes",
        sa.Column("teardown_cancellable", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "vibeboxes", sa.Column("capacity_waits", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("vibeboxes", sa.Column("moves", sa.Integer(), server_default="0", nullable=False))
    # Teardowns already under way keep the behaviour they started with (cancellable).
    op.execute("UPDATE vibeboxes SET teardown_cancellable = true WHERE status = 'terminating'")


def downgrade() -> None:
    op.drop_column("vibeboxes", "moves")
    op.drop_column("vibeboxes", "capacity_waits")
    op.drop_column("vibeboxes", "teardown_cancellable")
    op.drop_column("vibeboxes", "action")
