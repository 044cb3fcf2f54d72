"""cloud providers and cloud server lifecycle (creating, bootstrapping, retiring, destroyed)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATES = ("available", "allocated", "cleaning", "unhealthy", "draining", "retired")
NEW_STATES = (*OLD_STATES, "creating", "bootstrapping", "retiring", "destroyed")
DRIVERS = ("digitalocean", "ec2", "vultr", "linode", "aliyun_ecs")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "cloud_providers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("driver", sa.String(length=16), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("box_region", sa.String(length=64), nullable=True),
        sa.Column("image", sa.String(length=128), nullable=False),
        sa.Column("plan_sizes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("size_rules", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("size_prices", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("warm_size", sa.String(length=64), nullable=True),
        sa.Column("ssh_port", sa.Integer(), server_default="22", nullable=False),
        sa.Column("login_user", sa.String(length=64), server_default="root", nullable=False),
        sa.Column("api_base_url", sa.String(length=255), nullable=True),
        sa.Column("warm_target", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_servers", sa.Integer(), server_default="10", nullable=False),
        sa.Column("monthly_budget_cents", sa.Integer(), nullable=True),
        sa.Column("idle_retire_seconds", sa.Integer(), server_default="3600", nullable=False),
        sa.Column("boot_seconds", sa.Integer(), server_default="60", nullable=False),
        sa.Column("credentials_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("ssh_private_key_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("ssh_public_key", sa.Text(), nullable=False),
        sa.Column("ssh_key_id", sa.String(length=128), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(_in("driver", DRIVERS), name=op.f("ck_cloud_providers_driver")),
        sa.CheckConstraint(
            "ssh_port BETWEEN 1 AND 65535", name=op.f("ck_cloud_providers_ssh_port_range")
        ),
        sa.CheckConstraint(
            "warm_target >= 0 AND max_servers >= 0",
            name=op.f("ck_cloud_providers_counts_non_negative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloud_providers")),
        sa.UniqueConstraint("name", name=op.f("uq_cloud_providers_name")),
    )
    op.add_column("servers", sa.Column("cloud_provider_id", sa.Uuid(), nullable=True))
    op.add_column("servers", sa.Column("cloud_size", sa.String(length=64), nullable=True))
    op.add_column("servers", sa.Column("price_monthly_cents", sa.Integer(), nullable=True))
    op.add_column("servers", sa.Column("price_hourly", sa.Numeric(12, 5), nullable=True))
    op.add_column("servers", sa.Column("idle_since", sa.DateTime(timezone=True), nullable=True))
    op.create_foreign_key(
        op.f("fk_servers_cloud_provider_id_cloud_providers"),
        "servers",
        "cloud_providers",
        ["cloud_provider_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        op.f("ix_servers_cloud_provider_id"), "servers", ["cloud_provider_id"], unique=False
    )
    op.drop_constraint(op.f("ck_servers_state"), "servers", type_="check")
    op.create_check_constraint(op.f("ck_servers_state"), "servers", _in("state", NEW_STATES))


def downgrade() -> None:
    op.execute(
        "UPDATE servers SET state = 'retired' "
        "WHERE state IN ('creating', 'bootstrapping', 'retiring', 'destroyed')"
    )
    op.drop_constraint(op.f("ck_servers_state"), "servers", type_="check")
    op.create_check_constraint(op.f("ck_servers_state"), "servers", _in("state", OLD_STATES))
    op.drop_index(op.f("ix_servers_cloud_provider_id"), table_name="servers")
    op.drop_constraint(
        op.f("fk_servers_cloud_provider_id_cloud_providers"), "servers", type_="foreignkey"
    )
    for column in ("idle_since", "price_hourly", "price_monthly_cents", "cloud_size"):
        op.drop_column("servers", column)
    op.drop_column("servers", "cloud_provider_id")
    op.drop_table("cloud_providers")
