"""Capacity that follows demand: cloud servers created, kept warm, retired and reconciled.

Cloud server lifecycle (``servers.state``)::

    creating --node has an address--> bootstrapping --bootstrap verified--> available
    creating | bootstrapping --never reachable by CLOUD_BOOT_TIMEOUT_SECONDS--> destroyed
    available (idle past the provider's idle time, above its warm target) --> retiring --> destroyed

- **On demand** (:func:`request_capacity`, called by the engine when ``allocate_server``
  finds no fitting server): the first enabled provider for the box's region (a box without
  a region: any provider) that has a size for the plan, is under its maximum and its monthly
  budget, gets a new server row in ``creating`` - committed BEFORE any cloud API call - and
  the box waits with a ``creating_server`` event that shows the provider's expected boot
  time. Boxes that are already waiting share servers being created (one per waiting box).
- **Creation is idempotent**: the node is named ``vibebox-<server id>`` and tagged
  ``vibebox`` + ``vibebox-server-<id>``; :func:`advance_server` looks the tag up before it
  creates. A crash (SIGKILL) between the create call and our commit leaves a ``creating``
  row and a node with its tag: the next run - or the orphan reconciliation - adopts it.
- **First contact is trust-on-first-use**: a node we created is reached at the address the
  provider's API reports; the host key it presents then is pinned, and every later
  connection is checked against it (README "Cloud capacity").
- **Beat** (:func:`sweep`): stuck creations resent; each provider's warm target kept
  (idle + being created servers of its warm size); idle servers above the warm target retired
  after ``idle_retire_seconds``; orphans (nodes with our tag and no live row) adopted
  (``creating`` rows), else destroyed or only reported (``CLOUD_ORPHAN_POLICY``), always
  logged and counted (``vibebox_cloud_orphans_total``).

Remote work (cloud API, SSH) runs with no transaction open; like the engine's runner,
:func:`advance_server` and :func:`destroy_server` commit between their phases.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from app import telemetry
from app.config import BootstrapSettings, Settings
from app.crypto import encrypt_str
from app.errors import PermanentError, TransientError
from app.integrations import bootstrap, cloud, ssh
from app.integrations.cloud import CloudCompute, CloudRateLimitedError
from app.integrations.ssh import SSHTarget
from app.models import CloudProvider, Plan, Server, VibeBox
from app.services import cloud_providers, jobs, pool
from app.services.boxes import events
from app.services.boxes.engine import backoff

log = logging.getLogger(__name__)

ComputeFor = Callable[[CloudProvider], CloudCompute]
IN_FLIGHT = ("creating", "bootstrapping")
# A provider whose creation failed permanently is not asked again for this long.
FAILURE_COOLDOWN = timedelta(minutes=5)
CREATE_FAILED = "create failed: "


def _now() -> datetime:
    return datetime.now(UTC)


def default_compute_for(settings: Settings) -> ComputeFor:
    def compute_for(provider: CloudProvider) -> CloudCompute:
        account = cloud_providers.account_of(
            provider, settings.encryption_key, timeout=settings.cloud.api_timeout_seconds
        )
        return cloud.connect(account)

    return compute_for


# --- sizes, limits ---------------------------------------------------------------------------


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


def _providers_for(session: Session, region: str | None) -> list[CloudProvider]:
    stmt = select(CloudProvider).where(CloudProvider.enabled.is_(True))
    if region is not None:
        stmt = stmt.where(CloudProvider.box_region == region)
    return list(session.scalars(stmt.order_by(CloudProvider.name)))


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


# --- demand ------------------------------------------------------------------------------------


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
        in_flight = (
            session.scalar(
                select(func.count())
                .select_from(Server)
                .where(
                    Server.cloud_provider_id == provider.id,
                    Server.state.in_(IN_FLIGHT),
                    Server.cpu_cores >= plan.cpu_cores,
                    Server.ram_gb >= plan.ram_gb,
                    Server.disk_gb >= plan.disk_gb,
                )
            )
            or 0
        )
        waiting = (
            session.scalar(
                select(func.count())
                .select_from(VibeBox)
                .where(
                    VibeBox.status == "waiting_for_capacity",
                    VibeBox.server_id.is_(None),
                    VibeBox.id != box.id,
                )
            )
            or 0
        )
        boot = f"ready in about {_duration(provider.boot_seconds)}"
        if in_flight > waiting:
            return f"A new server is being created at {provider.name} ({provider.region}); {boot}."
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


def _duration(seconds: int) -> str:
    return f"{seconds} s" if seconds < 120 else f"{round(seconds / 60)} min"


# --- bringing a server up -----------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """What one :func:`advance_server` run came to."""

    outcome: str  # "available" | "retry" | "destroyed" | "skipped"
    delay: float = 0.0
    detail: str = ""


def bootstrap_cloud_server(
    server: SSHTarget, happy_server_url: str, *, timeout: float = 30.0
) -> None:
    """Make a freshly created cloud server ready for boxes, and verify it: the Fabric
    bootstrap (``app/integrations/bootstrap.py``: node, happy-coder, ``HAPPY_SERVER_URL``
    of the server's region in the login environment, then the admission checks). The host
    key is pinned already (first contact). Raises TransientError (retried until the boot
    timeout) or PermanentError (the server is given up and replaced).
    """
    bootstrap.bootstrap_host(
        server,
        happy_server_url=happy_server_url,
        settings=BootstrapSettings.from_env(),
        connect_timeout=timeout,
    )


Bootstrap = Callable[[SSHTarget, str], None]  # (target, its Happy server URL)


@dataclass
class CapacityContext:
    settings: Settings
    compute_for: ComputeFor
    bootstrap: Bootstrap = field(default=bootstrap_cloud_server)


def advance_server(session: Session, server_id: uuid.UUID, ctx: CapacityContext) -> Progress:
    """Move a ``creating`` / ``bootstrapping`` server as far as it goes now (idempotent)."""
    server = session.get(Server, server_id)
    if server is None or server.state not in IN_FLIGHT or server.cloud_provider_id is None:
        return Progress("skipped", detail=server.state if server else "gone")
    provider = session.get(CloudProvider, server.cloud_provider_id)
    assert provider is not None
    settings = ctx.settings
    deadline = server.created_at + timedelta(seconds=settings.cloud.boot_timeout_seconds)
    if _now() > deadline:
        return _give_up(session, server_id, ctx, "never became reachable")
    compute = ctx.compute_for(provider)
    try:
        if server.state == "creating":
            reached = _create_and_locate(session, server_id, provider, compute, ctx)
            if reached is not None:
                return reached
        return _bootstrap(session, server_id, ctx)
    except CloudRateLimitedError as exc:
        session.rollback()
        _note(session, server_id, str(exc))
        return Progress("retry", max(exc.retry_after, settings.cloud.poll_seconds), str(exc))
    except PermanentError as exc:
        session.rollback()
        server = session.get(Server, server_id)
        if server is not None and server.cloud_node_id is None:
            return _give_up(session, server_id, ctx, f"{CREATE_FAILED}{exc.safe_message}")
        return _give_up(session, server_id, ctx, f"failed: {exc.safe_message}")
    except TransientError as exc:
        session.rollback()
        failures = _note(session, server_id, str(exc))
        # Exponential backoff with jitter, from CLOUD_POLL_SECONDS up to a minute.
        delay = backoff(
            failures, settings.cloud.poll_seconds, max(60.0, settings.cloud.poll_seconds)
        )
        return Progress("retry", delay, str(exc))


def _note(session: Session, server_id: uuid.UUID, error: str) -> int:
    """Record a transient fault; returns how many in a row (for the backoff)."""
    server = session.get(Server, server_id)
    failures = 0
    if server is not None:
        server.last_error = error[:2000]
        server.consecutive_failures += 1
        failures = server.consecutive_failures
    session.commit()
    return failures


def _create_and_locate(
    session: Session,
    server_id: uuid.UUID,
    provider: CloudProvider,
    compute: CloudCompute,
    ctx: CapacityContext,
) -> Progress | None:
    """Create (or find) the node and wait for its address; None once it has one."""
    server = session.get(Server, server_id)
    assert server is not None
    if provider.ssh_key_id is None and provider.driver != "linode":
        name, public = f"vibebox-{provider.name}", provider.ssh_public_key
        session.commit()
        registered = compute.register_key(name, public)
        provider = session.get(CloudProvider, provider.id)  # type: ignore[assignment]
        provider.ssh_key_id = registered
        session.commit()
        server = session.get(Server, server_id)
        assert server is not None
    node_id = server.cloud_node_id
    if node_id is None:
        size, image, key_id = server.cloud_size or "", provider.image, provider.ssh_key_id
        session.commit()  # the row is committed in `creating` before the API call
        created = compute.create_node(
            name=cloud.node_name(server_id),
            size=size,
            image=image,
            ssh_key_id=key_id,
            tags=cloud.tags_for(server_id),
        )
        server = session.get(Server, server_id, populate_existing=True)
        assert server is not None
        server.cloud_node_id = node_id = created.id
        session.commit()
        log.info("capacity: server %s is node %s at %s", server_id, created.id, provider.name)
    session.commit()
    node = compute.get_node(node_id)
    if node is None:
        return _give_up(session, server_id, ctx, "the node vanished at the provider")
    if not node.public_ips:
        server = session.get(Server, server_id, populate_existing=True)
        if server is not None:
            server.updated_at = _now()  # progress: the sweep resends only stalled servers
        session.commit()
        return Progress("retry", ctx.settings.cloud.poll_seconds, f"node {node.id} {node.state}")
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    if server.state == "creating":
        server.host = node.public_ips[0]
        server.state = "bootstrapping"
        session.commit()
        log.info("capacity: server %s has address %s", server_id, server.host)
    return None


def _bootstrap(session: Session, server_id: uuid.UUID, ctx: CapacityContext) -> Progress:
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    settings = ctx.settings
    timeout = settings.provisioning.ssh_connect_timeout_seconds
    if not server.host_key_fingerprint:
        host, port = server.host, server.ssh_port
        session.commit()
        # First contact: trust on first use (we created this node; the API told us where).
        fingerprint = ssh.fetch_host_key_fingerprint(host, port, timeout=timeout)
        server = session.get(Server, server_id, populate_existing=True)
        assert server is not None
        server.host_key_fingerprint = fingerprint
        session.commit()
        log.info("capacity: server %s host key pinned (first contact): %s", server_id, fingerprint)
    target = pool.ssh_target_for(server, settings.encryption_key)
    session.commit()
    ctx.bootstrap(target, settings.happy_url_for(server.region))
    server = session.get(Server, server_id, populate_existing=True)
    if server is None or server.state != "bootstrapping":
        session.commit()
        return Progress("skipped", detail="state changed meanwhile")
    server.state = "available"
    server.idle_since = server.last_checked_at = _now()
    server.last_error = None
    server.consecutive_failures = 0
    provider = session.get(CloudProvider, server.cloud_provider_id)
    pool.wake_waiting_boxes(session, server)
    session.commit()
    telemetry.CLOUD_SERVERS.labels(
        provider=provider.name if provider else "?", event="available"
    ).inc()
    log.info("capacity: server %s available", server_id)
    return Progress("available")


def _give_up(session: Session, server_id: uuid.UUID, ctx: CapacityContext, reason: str) -> Progress:
    """Destroy the node (if any) and the server row's hopes; waiting boxes ask again (and so
    get a replacement)."""
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    log.warning("capacity: giving up server %s: %s", server_id, reason)
    server.state = "retiring"
    server.last_error = reason[:2000]
    session.commit()
    progress = destroy_server(session, server_id, ctx, reason=reason)
    if progress.outcome != "destroyed":
        # The provider did not let us destroy it yet: the retire task keeps trying (and the
        # sweep resends it while the server stays `retiring`).
        jobs.enqueue_server(session, "capacity.retire_server", server_id)
        session.commit()
        return replace(progress, outcome="skipped", detail=f"retiring: {reason}")
    return replace(progress, detail=reason)


def destroy_server(
    session: Session, server_id: uuid.UUID, ctx: CapacityContext, *, reason: str | None = None
) -> Progress:
    """``retiring`` -> node destroyed -> ``destroyed`` (idempotent)."""
    server = session.get(Server, server_id, populate_existing=True)
    if server is None or server.state != "retiring":
        session.commit()
        return Progress("skipped", detail=server.state if server else "gone")
    provider = session.get(CloudProvider, server.cloud_provider_id)
    node_id = server.cloud_node_id
    session.commit()
    if provider is not None:
        compute = ctx.compute_for(provider)
        try:
            if node_id is None:
                # A crash may have left a node we never recorded: find it by its tag.
                for node in compute.list_nodes(tag=cloud.server_tag(server_id)):
                    compute.destroy_node(node.id)
            else:
                compute.destroy_node(node_id)
        except CloudRateLimitedError as exc:
            return Progress(
                "retry", max(exc.retry_after, ctx.settings.cloud.poll_seconds), str(exc)
            )
        except (TransientError, PermanentError) as exc:
            _note(session, server_id, f"destroy: {exc}")
            return Progress("retry", ctx.settings.cloud.poll_seconds * 2, str(exc))
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    server.state = "destroyed"
    if reason is not None:
        server.last_error = reason[:2000]
    session.commit()
    telemetry.CLOUD_SERVERS.labels(
        provider=provider.name if provider else "?", event="destroyed"
    ).inc()
    log.info("capacity: server %s destroyed (node %s)", server_id, node_id)
    if reason is not None:
        # The box that counted on it asks again now (and gets a replacement).
        pool.wake_waiting_boxes(session, server)
        session.commit()
    return Progress("destroyed", detail=reason or "")


# --- beat -------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    resent: list[uuid.UUID] = field(default_factory=list)
    created: list[uuid.UUID] = field(default_factory=list)
    retiring: list[uuid.UUID] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sweep(session: Session, ctx: CapacityContext) -> SweepReport:
    """One capacity pass over every provider (beat, every CLOUD_SWEEP_INTERVAL_SECONDS)."""
    report = SweepReport()
    resend_stuck(session, ctx, report)
    for provider_id in list(session.scalars(select(CloudProvider.id).order_by(CloudProvider.name))):
        provider = session.get(CloudProvider, provider_id)
        assert provider is not None
        refill_warm_pool(session, provider, ctx, report)
        retire_idle(session, provider, report)
        session.commit()  # publishes the jobs
        provider = session.get(CloudProvider, provider_id)
        assert provider is not None
        try:
            reconcile_orphans(session, provider, ctx, report)
        except (TransientError, PermanentError) as exc:
            session.rollback()
            report.errors.append(f"{provider.name}: {exc}")
            log.warning("capacity: orphan check of %s failed: %s", provider.name, exc)
    session.commit()
    return report


def resend_stuck(session: Session, ctx: CapacityContext, report: SweepReport) -> None:
    """Servers in creating/bootstrapping/retiring that made no progress for
    STUCK_STEP_SECONDS (a killed worker, a lost message) are sent on again."""
    stalled = max(
        ctx.settings.cloud.poll_seconds * 4, ctx.settings.provisioning.stuck_after_seconds
    )
    cutoff = _now() - timedelta(seconds=stalled)
    rows = session.execute(
        select(Server.id, Server.state).where(
            Server.state.in_((*IN_FLIGHT, "retiring")), Server.updated_at < cutoff
        )
    ).all()
    for server_id, state in rows:
        task = "capacity.retire_server" if state == "retiring" else "capacity.bring_up"
        jobs.enqueue_server(session, task, server_id)
        report.resent.append(server_id)
    session.commit()


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


def retire_idle(session: Session, provider: CloudProvider, report: SweepReport) -> None:
    """Idle servers beyond the warm target (all of them when the provider is disabled), idle
    for ``idle_retire_seconds``, and servers an operator ``retired`` go ``retiring`` (their
    node is destroyed by a task)."""
    occupied = exists().where(VibeBox.server_id == Server.id, pool.LIVE_BOX)
    idle = list(
        session.scalars(
            select(Server)
            .where(
                Server.cloud_provider_id == provider.id,
                Server.state == "available",
                ~occupied,
            )
            .order_by(Server.idle_since.desc().nulls_last(), Server.id)
            .with_for_update(skip_locked=True, of=Server)
        )
    )
    # An operator retired or removed-with-history a cloud server: its node still costs money.
    for server in session.scalars(
        select(Server)
        .where(Server.cloud_provider_id == provider.id, Server.state == "retired", ~occupied)
        .with_for_update(skip_locked=True, of=Server)
    ):
        server.state = "retiring"
        jobs.enqueue_server(session, "capacity.retire_server", server.id)
        report.retiring.append(server.id)
        log.info("capacity: server %s retired by an operator: destroying its node", server.id)
    keep = provider.warm_target if provider.enabled else 0
    cutoff = _now() - timedelta(seconds=provider.idle_retire_seconds)
    for server in idle[keep:]:
        if server.idle_since is not None and server.idle_since > cutoff:
            continue
        server.state = "retiring"
        jobs.enqueue_server(session, "capacity.retire_server", server.id)
        report.retiring.append(server.id)
        log.info("capacity: server %s idle since %s: retiring", server.id, server.idle_since)
    session.flush()


def reconcile_orphans(
    session: Session, provider: CloudProvider, ctx: CapacityContext, report: SweepReport
) -> None:
    """Nodes with our tag: ours (a live row with that node id), adoptable (a ``creating``
    row without a node id: a crash between create and commit), or orphans."""
    name, policy = provider.name, ctx.settings.cloud.orphan_policy
    compute = ctx.compute_for(provider)
    session.commit()
    nodes = compute.list_nodes(tag=cloud.TAG)
    for node in nodes:
        row = _server_of(session, node.server_id)
        if row is not None and row.cloud_provider_id == provider.id:
            if row.cloud_node_id == node.id and row.state != "destroyed":
                continue
            if row.cloud_node_id is None and row.state == "creating":
                row.cloud_node_id = node.id
                session.commit()
                report.adopted.append(node.id)
                telemetry.CLOUD_ORPHANS.labels(provider=name, action="adopted").inc()
                log.warning(
                    "capacity: node %s at %s adopted by creating server %s", node.id, name, row.id
                )
                continue
        session.commit()
        report.orphans.append(node.id)
        if policy == "destroy":
            compute.destroy_node(node.id)
            action = "destroyed"
        else:
            action = "reported"
        telemetry.CLOUD_ORPHANS.labels(provider=name, action=action).inc()
        log.warning(
            "capacity: orphan node %s (%s) at %s, no live server row: %s",
            node.id,
            node.name,
            name,
            action,
        )


def _server_of(session: Session, server_id: str | None) -> Server | None:
    if server_id is None:
        return None
    try:
        return session.get(Server, uuid.UUID(server_id))
    except ValueError:
        return None
