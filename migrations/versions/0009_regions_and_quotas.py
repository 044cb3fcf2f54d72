"""regions and quotas: plans' regions, default region and box limit; the region of
orders and boxes; a user's Happy token per Happy server

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 07:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("plans", sa.Column("regions", postgresql.JSONB(), nullable=True))
    op.add_column("plans", sa.Column("default_region", sa.String(length=32), nullable=True))
    op.add_column("plans", sa.Column("max_live_boxes_per_user", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_plans_max_live_boxes_non_negative"),
        "plans",
        "max_live_boxes_per_user IS NULL OR max_live_boxes_per_user >= 0",
    )
    op.add_column("orders", sa.Column("region", sa.String(length=32), nullable=True))
    op.add_column("vibeboxes", sa.Column("region", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_vibeboxes_region"), "vibeboxes", ["region"], unique=False)
    op.create_table(
        "happy_server_tokens",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("server_url", sa.Text(), nullable=False),
        sa.Column("token_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_happy_server_tokens_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_happy_server_tokens")),
        sa.UniqueConstraint(
            "user_id", "server_url", name=op.f("uq_happy_server_tokens_user_id_server_url")
        ),
    )
    op.create_index(
        op.f("ix_happy_server_tokens_user_id"), "happy_server_tokens", ["user_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_happy_server_tokens_user_id"), table_name="happy_server_tokens")
    op.drop_table("happy_server_tokens")
    op.drop_index(op.f("ix_vibeboxes_region"), table_name="vibeboxes")
    op.drop_column("vibeboxes", "region")
    op.drop_column("orders", "region")
    op.drop_constraint(op.f("ck_plans_max_live_boxes_non_negative"), "plans", type_="check")
    op.drop_column("plans", "max_live_boxes_per_user")
    op.drop_column("plans", "default_region")
    op.drop_column("plans", "regions")
