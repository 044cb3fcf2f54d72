"""seed the plan catalogue (basic, pro, enterprise)

Idempotent: re-running updates the rows to these values without touching others.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLANS = [
    {
        "id": "basic",
        "name": "Basic",
        "description": "A small box for side projects: Happy + Claude Code ready to go.",
        "price_monthly": 2900,
        "price_yearly": 29000,
        "currency": "USD",
        "cpu_cores": 2,
        "ram_gb": 4,
        "disk_gb": 40,
        "claude_api_quota": 10,
        "features": ["Happy daemon preconfigured", "Claude Code", "Mobile + web access"],
    },
    {
        "id": "pro",
        "name": "Pro",
        "description": "More cores and memory for daily professional work.",
        "price_monthly": 7900,
        "price_yearly": 79000,
        "currency": "USD",
        "cpu_cores": 4,
        "ram_gb": 8,
        "disk_gb": 80,
        "claude_api_quota": 40,
        "features": [
            "Happy daemon preconfigured",
            "Claude Code",
            "Mobile + web access",
            "Priority provisioning",
        ],
    },
    {
        "id": "enterprise",
        "name": "Enterprise",
        "description": "A large box for teams and heavy builds, with priority support.",
        "price_monthly": 19900,
        "price_yearly": 199000,
        "currency": "USD",
        "cpu_cores": 8,
        "ram_gb": 32,
        "disk_gb": 200,
        "claude_api_quota": 150,
        "features": [
            "Happy daemon preconfigured",
            "Claude Code",
            "Mobile + web access",
            "Priority provisioning",
            "Priority support",
        ],
    },
]

plans = sa.table(
    "plans",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("description", sa.Text),
    sa.column("price_monthly", sa.Integer),
    sa.column("price_yearly", sa.Integer),
    sa.column("currency", sa.String),
    sa.column("cpu_cores", sa.Integer),
    sa.column("ram_gb", sa.Integer),
    sa.column("disk_gb", sa.Integer),
    sa.column("claude_api_quota", sa.Integer),
    sa.column("features", postgresql.JSONB),
    sa.column("active", sa.Boolean),
)


def upgrade() -> None:
    stmt = postgresql.insert(plans).values([{**p, "active": True} for p in PLANS])
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={c: stmt.excluded[c] for c in PLANS[0] if c != "id"},
    )
    op.execute(stmt)


def downgrade() -> None:
    op.execute(plans.delete().where(plans.c.id.in_([p["id"] for p in PLANS])))
