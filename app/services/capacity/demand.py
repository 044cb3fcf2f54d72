"""Capacity on demand: a box no server fits gets a cloud server created (or one being created)."""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from app import telemetry
from app.crypto import encrypt_str
from app.models import CloudProvider, Plan, Server, VibeBox
from app.services import jobs, pool
from app.services.boxes import events
from app.services.boxes.statuses import BoxStatus
from app.services.capacity import cloud_providers
from app.services.capacity.budget import SizeChoice, limit_refusal, size_for_plan
from app.services.capacity.context import IN_FLIGHT

log = logging.getLogger(__name__)


def _providers_for(session: Session, region: str | None) -> list[CloudProvider]:
    stmt = select(CloudProvider).where(CloudProvider.enabled.is_(True))
    if region is not None:
        stmt = stmt.where(CloudProvider.box_region == region)
    return list(session.scalars(stmt.order_by(CloudProvider.name)))


def _takes_region(region: str | None) -> ColumnElement[bool]:
    """Boxes allocation hands a server of ``region`` to (``allocation.wake_waiting_boxes``):
    a box of region R takes only servers of R, a box without a region takes any."""
    if region is None:
        return VibeBox.region.is_(None)
    return VibeBox.region.is_(None) | (VibeBox.region == region)


def new_cloud_server(
    session: Session, provider: CloudProvider, choice: SizeChoice, *, encryption_key: bytes
) -> Server:
    """A server row in ``creating`` (committed by the caller before any API call) and the
    job that creates its node (published after that commit)."""
    server_id = uuid.uuid4()
    private_key = cloud_providers.private_key_of(provider, encryption_key)
    price = (provider.size_prices or {}).get(choice.size)
    server = Server(
        id=server_id,
        host=f"pending-{server_id}",  # the node's address once the provider reports it
        ssh_port=provider.ssh_port,
        ssh_user=provider.login_user,
        auth_method="key",
        credential_encrypted=encrypt_str(
            encryption_key, private_key, aad=pool.credential_aad(server_id)
        ),
        host_key_fingerprint="",  # pinned at first contact (TOFU, module docstring)
        cpu_cores=choice.cpu_cores,
        ram_gb=choice.ram_gb,
        disk_gb=choice.disk_gb,
        region=provider.box_region,
        label=f"{provider.name}/{choice.size}",
        state="creating",
        consecutive_failures=0,
        cloud_provider=provider.driver,
        cloud_provider_id=provider.id,
        cloud_size=choice.size,
        price_monthly_cents=int(price) if price is not None else None,
        price_hourly=(Decimal(int(price)) / 100 / 730).quantize(Decimal("0.00001"))
        if price is not None
        else None,
    )
    session.add(server)
    session.flush()
    jobs.enqueue_server(session, "capacity.bring_up", server.id)
    telemetry.CLOUD_SERVERS.labels(provider=provider.name, event="requested").inc()
    log.info(
        "capacity: server %s requested at %s (%s, %s)",
        server.id,
        provider.name,
        provider.region,
        choice.size,
    )
    return server


def request_capacity(session: Session, box_id: uuid.UUID, *, encryption_key: bytes) -> str | None:
    """No server fits ``box_id``: have one created (or count on one being created).

    Returns what the box waits for (its ``lastError``), or None when no cloud provider
    serves the box's region (the pool's own shortfall message applies). Refusals (maximum,
    budget, no size for the plan) come back as the message: the box keeps waiting.
    """
    box = session.get(VibeBox, box_id)
    if box is None or box.server_id is not None:
        return None
    plan = session.get(Plan, box.plan_id)
    if plan is None:
        return None
    providers = _providers_for(session, box.region)
    if not providers:
        return None
    refusals: list[str] = []
    for provider in providers:
        choice = size_for_plan(provider, plan)
        if choice is None:
            refusals.append(
                f"capacity: provider {provider.name} has no size for the {plan.id} plan"
            )
            continue
        # One demand decision per provider at a time (the row lock serializes them).
        session.execute(
            select(CloudProvider.id).where(CloudProvider.id == provider.id).with_for_update()
        )
        # Servers of this provider being created that this box fits (their region is the
        # provider's box_region, which matches the box's: _providers_for)...
        fitting = (
            select(Server.id)
            .where(
                Server.cloud_provider_id == provider.id,
                Server.state.in_(IN_FLIGHT),
                Server.cpu_cores >= plan.cpu_cores,
                Server.ram_gb >= plan.ram_gb,
                Server.disk_gb >= plan.disk_gb,
            )
            .subquery()
        )
        in_flight = session.scalar(select(func.count()).select_from(fitting)) or 0
        # ...and the other waiting boxes that could take one of them: boxes allocation would
        # hand such a server to (its region, or none) whose plan fits one. Boxes of other
        # regions or plans no such server fits wait on servers of their own.
        other = Plan.__table__.alias("other_plan")
        fits_one = (
            select(Server.id)
            .where(
                Server.id.in_(select(fitting.c.id)),
                Server.cpu_cores >= other.c.cpu_cores,
                Server.ram_gb >= other.c.ram_gb,
                Server.disk_gb >= other.c.disk_gb,
            )
            .exists()
        )
        waiting = (
            session.scalar(
                select(func.count())
                .select_from(VibeBox)
                .join(other, other.c.id == VibeBox.plan_id)
                .where(
                    VibeBox.status == BoxStatus.WAITING_FOR_CAPACITY,
                    VibeBox.server_id.is_(None),
                    VibeBox.id != box.id,
                    _takes_region(provider.box_region),
                    fits_one,
                )
            )
            or 0
        )
        boot = f"ready in about {_duration(provider.boot_seconds)}"
        if in_flight > waiting:
            message = f"A new server is being created at {provider.name} ({provider.region})"
            return f"{message}; {boot}.{_creation_trouble(session, fitting)}"
        refusal = limit_refusal(session, provider, choice.size)
        if refusal is not None:
            refusals.append(refusal)
            continue
        new_cloud_server(session, provider, choice, encryption_key=encryption_key)
        message = f"Creating a new server at {provider.name} ({provider.region}); {boot}."
        events.record(session, box, "creating_server", message)
        return message
    log.warning("capacity: box %s cannot get a cloud server: %s", box_id, "; ".join(refusals))
    return "; ".join(refusals)


def _creation_trouble(session: Session, fitting: Any) -> str:
    """What the owner of a waiting box should know about the servers being created for it:
    the cloud API's waits (rate limit, temporary errors) while they last, in words safe for
    users (the server row's ``last_error`` keeps the provider's own text for operators)."""
    row = session.execute(
        select(Server.consecutive_failures, Server.last_error)
        .where(Server.id.in_(select(fitting.c.id)), Server.consecutive_failures > 0)
        .order_by(Server.consecutive_failures.desc())
        .limit(1)
    ).first()
    if row is None:
        return ""
    calls = f"{row.consecutive_failures} failed call{'s' if row.consecutive_failures > 1 else ''}"
    if "rate limit" in (row.last_error or "").lower():
        return f" The cloud provider asked us to slow down (rate limit, {calls}); retrying."
    return f" The cloud provider had a temporary problem ({calls} so far); retrying."


def _duration(seconds: int) -> str:
    return f"{seconds} s" if seconds < 120 else f"{round(seconds / 60)} min"
