"""servers: optional SSH gateway (bastion) with its own login, credential and pinned key

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GATEWAY_COMPLETE = (
    "gateway_host IS NULL OR (gateway_port IS NOT NULL AND gateway_user IS NOT NULL"
    " AND gateway_auth_method IN ('key', 'password')"
    " AND gateway_credential_encrypted IS NOT NULL AND gateway_host_key_fingerprint IS NOT NULL)"
)


def upgrade() -> None:
    op.add_column("servers", sa.Column("gateway_host", sa.String(length=255), nullable=True))
    op.add_column("servers", sa.Column("gateway_port", sa.Integer(), nullable=True))
    op.add_column("servers", sa.Column("gateway_user", sa.String(length=64), nullable=True))
    op.add_column("servers", sa.Column("gateway_auth_method", sa.String(length=16), nullable=True))
    op.add_column(
        "servers", sa.Column("gateway_credential_encrypted", sa.LargeBinary(), nullable=True)
    )
    op.add_column(
        "servers", sa.Column("gateway_host_key_fingerprint", sa.String(length=128), nullable=True)
    )
    op.create_check_constraint(
        op.f("ck_servers_gateway_complete"), "servers", sa.text(GATEWAY_COMPLETE)
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_servers_gateway_complete"), "servers", type_="check")
    for column in (
        "gateway_host_key_fingerprint",
        "gateway_credential_encrypted",
        "gateway_auth_method",
        "gateway_user",
        "gateway_port",
        "gateway_host",
    ):
        op.drop_column("servers", column)
