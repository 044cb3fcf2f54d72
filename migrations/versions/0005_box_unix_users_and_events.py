"""one Unix user per box, daemon watch, box events

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 05:40:00
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
    op.create_table(
        "box_events",
        sa.Column("vibebox_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vibebox_id"],
            ["vibeboxes.id"],
            name=op.f("fk_box_events_vibebox_id_vibeboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_box_events")),
    )
    op.create_index(
        "ix_box_events_vibebox_id_created_at",
        "box_events",
        ["vibebox_id", "created_at"],
        unique=False,
    )
    op.add_column("vibeboxes", sa.Column("degraded_reason", sa.Text(), nullable=True))
    op.add_column("vibeboxes", sa.Column("unix_user", sa.String(length=32), nullable=True))
    op.add_column("vibeboxes", sa.Column("unix_uid", sa.Integer(), nullable=True))
    op.add_column("vibeboxes", sa.Column("login_keys_digest", sa.String(length=64), nullable=True))
    op.add_column(
        "vibeboxes",
        sa.Column("daemon_restarts", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "vibeboxes",
        sa.Column("daemon_restarted_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("vibeboxes", "daemon_restarted_at")
    op.drop_column("vibeboxes", "daemon_restarts")
    op.drop_column("vibeboxes", "login_keys_digest")
    op.drop_column("vibeboxes", "unix_uid")
    op.drop_column("vibeboxes", "unix_user")
    op.drop_column("vibeboxes", "degraded_reason")
    op.drop_index("ix_box_events_vibebox_id_created_at", table_name="box_events")
    op.drop_table("box_events")
