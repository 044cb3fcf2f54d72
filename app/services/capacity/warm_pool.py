"""The warm pool: each provider keeps its warm target of idle + being-created servers."""

from __future__ import annotations

import logging

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from app.models import CloudProvider, Plan, Server, VibeBox
from app.services import pool
from app.services.capacity.budget import SizeChoice, _rule, limit_refusal, size_for_plan
from app.services.capacity.context import IN_FLIGHT, CapacityContext, SweepReport
from app.services.capacity.demand import new_cloud_server

log = logging.getLogger(__name__)


def warm_size_of(session: Session, provider: CloudProvider) -> SizeChoice | None:
    """What warm servers are: ``warm_size`` (resources from its rule or the largest plan
    mapped to it), else the size of the smallest active plan."""
    plans = list(
        session.scalars(
            select(Plan)
            .where(Plan.active.is_(True))
            .order_by(Plan.cpu_cores, Plan.ram_gb, Plan.disk_gb, Plan.id)
        )
    )
    if provider.warm_size:
        rule = _rule(provider, provider.warm_size)
        if rule is not None:
            return rule
        mapped = [p for p in plans if (provider.plan_sizes or {}).get(p.id) == provider.warm_size]
        if mapped:
            p = mapped[-1]
            return SizeChoice(provider.warm_size, p.cpu_cores, p.ram_gb, p.disk_gb)
        return None
    for plan in plans:
        choice = size_for_plan(provider, plan)
        if choice is not None:
            return choice
    return None


def refill_warm_pool(
    session: Session, provider: CloudProvider, ctx: CapacityContext, report: SweepReport
) -> None:
    """Create servers until idle + being-created servers of the warm size reach the target."""
    if not provider.enabled or provider.warm_target <= 0:
        return
    choice = warm_size_of(session, provider)
    if choice is None:
        log.warning("capacity: %s has a warm target but no warm size", provider.name)
        return
    session.execute(
        select(CloudProvider.id).where(CloudProvider.id == provider.id).with_for_update()
    )
    occupied = exists().where(VibeBox.server_id == Server.id, pool.LIVE_BOX)
    ready = (
        session.scalar(
            select(func.count())
            .select_from(Server)
            .where(
                Server.cloud_provider_id == provider.id,
                Server.cloud_size == choice.size,
                (Server.state.in_(IN_FLIGHT)) | ((Server.state == "available") & ~occupied),
            )
        )
        or 0
    )
    for _ in range(provider.warm_target - ready):
        refusal = limit_refusal(session, provider, choice.size)
        if refusal is not None:
            log.warning("capacity: warm pool of %s not refilled: %s", provider.name, refusal)
            break
        server = new_cloud_server(
            session, provider, choice, encryption_key=ctx.settings.encryption_key
        )
        report.created.append(server.id)
