"""What a provider may create: the size a plan takes there, its maximum and monthly budget cap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import CloudProvider, Plan, Server
from app.services.capacity import cloud_providers
from app.services.capacity.context import _now

# A provider whose creation failed permanently is not asked again for this long.
FAILURE_COOLDOWN = timedelta(minutes=5)


CREATE_FAILED = "create failed: "


@dataclass(frozen=True)
class SizeChoice:
    size: str
    cpu_cores: int
    ram_gb: int
    disk_gb: int


def size_for_plan(provider: CloudProvider, plan: Plan) -> SizeChoice | None:
    """The plan's size: ``plan_sizes[plan.id]``, else the smallest rule covering the plan."""
    mapped = (provider.plan_sizes or {}).get(plan.id)
    if mapped:
        rule = _rule(provider, mapped)
        if rule is not None:
            return rule
        return SizeChoice(mapped, plan.cpu_cores, plan.ram_gb, plan.disk_gb)
    fitting = [
        SizeChoice(r["size"], int(r["cpu"]), int(r["ramGb"]), int(r["diskGb"]))
        for r in provider.size_rules or []
        if int(r["cpu"]) >= plan.cpu_cores
        and int(r["ramGb"]) >= plan.ram_gb
        and int(r["diskGb"]) >= plan.disk_gb
    ]
    fitting.sort(key=lambda c: (c.cpu_cores, c.ram_gb, c.disk_gb))
    return fitting[0] if fitting else None


def _rule(provider: CloudProvider, size: str) -> SizeChoice | None:
    for r in provider.size_rules or []:
        if r.get("size") == size:
            return SizeChoice(size, int(r["cpu"]), int(r["ramGb"]), int(r["diskGb"]))
    return None


def _live_servers(provider: CloudProvider) -> Any:
    return (
        select(Server)
        .where(
            Server.cloud_provider_id == provider.id,
            Server.state.in_(cloud_providers.LIVE_SERVER_STATES),
        )
        .order_by(Server.created_at, Server.id)
    )


def limit_refusal(session: Session, provider: CloudProvider, size: str) -> str | None:
    """Why ``provider`` may not create one more server of ``size`` now (None: it may)."""
    live = list(session.scalars(_live_servers(provider)))
    if len(live) >= provider.max_servers:
        return (
            f"capacity: provider {provider.name} reached its maximum of "
            f"{provider.max_servers} servers"
        )
    if provider.monthly_budget_cents is not None:
        price = (provider.size_prices or {}).get(size)
        if price is None:
            return (
                f"capacity: provider {provider.name} has no monthly price for size {size} "
                "(needed for its budget cap)"
            )
        committed = sum(s.price_monthly_cents or 0 for s in live)
        if committed + int(price) > provider.monthly_budget_cents:
            return (
                f"capacity: provider {provider.name} reached its monthly budget cap of "
                f"${provider.monthly_budget_cents / 100:.2f} "
                f"(${committed / 100:.2f} committed, a {size} server costs ${int(price) / 100:.2f})"
            )
    failed = session.scalar(
        select(Server.last_error)
        .where(
            Server.cloud_provider_id == provider.id,
            Server.state == "destroyed",
            Server.last_error.startswith(CREATE_FAILED),
            Server.updated_at > _now() - FAILURE_COOLDOWN,
        )
        .order_by(Server.updated_at.desc())
        .limit(1)
    )
    if failed:
        why = failed[len(CREATE_FAILED) :]
        return f"capacity: provider {provider.name} refused to create a server ({why})"
    return None
