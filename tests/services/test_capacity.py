"""The capacity service against real PostgreSQL and the DigitalOcean double through the real
libcloud driver; droplets are real sshd machines (bootstrap = the pool's admission check)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.integrations import cloud
from app.models import BoxEvent, CloudProvider, Server, VibeBox
from app.services import capacity, pool
from app.services.capacity import cloud_providers
from tests.factories import UserFactory
from tests.support.do_double import DigitalOceanDouble


@pytest.fixture
def do(do_double: DigitalOceanDouble) -> Iterator[DigitalOceanDouble]:
    do_double.reset_faults()
    yield do_double
    do_double.reset_faults()
    for droplet in do_double.live_droplets():
        compute = cloud.LibcloudCompute(
            cloud.CloudAccount("digitalocean", {"key": do_double.token}, "nyc1", do_double.url)
        )
        compute.destroy_node(str(droplet.id))


def make_provider(session, settings, do, **overrides) -> CloudProvider:
    values = {
        "name": f"do-{uuid.uuid4().hex[:6]}",
        "driver": "digitalocean",
        "region": "nyc1",
        "image": "ubuntu-24-04-x64",
        "plan_sizes": {"basic": "s-2vcpu-4gb"},
        "size_rules": [{"size": "s-4vcpu-8gb", "cpu": 4, "ramGb": 8, "diskGb": 160}],
        "size_prices": {"s-2vcpu-4gb": 2400, "s-4vcpu-8gb": 4800},
        "ssh_port": do.ssh_port,
        "login_user": do.login_user,
        "api_base_url": do.url,
        "boot_seconds": 2,
        "max_servers": 5,
    }
    values.update(overrides)
    provider = cloud_providers.add_provider(
        session, encryption_key=settings.encryption_key, credentials={"key": do.token}, **values
    )
    session.commit()
    return provider


def make_box(session, plan: str = "basic") -> VibeBox:
    box = VibeBox(user_id=UserFactory().id, plan_id=plan, status="provisioning")
    session.add(box)
    session.commit()
    return box


@pytest.fixture
def ctx(settings, do) -> capacity.CapacityContext:
    # The droplets' sessions use the fleet's Happy server: so must the bootstrap.
    fast = replace(
        settings,
        cloud=replace(settings.cloud, poll_seconds=0.2),
        happy_server_url=do.fleet.happy_url,
    )
    return capacity.CapacityContext(settings=fast, compute_for=capacity.default_compute_for(fast))


def bring_up(session, server_id, ctx, timeout: float = 30) -> capacity.Progress:
    deadline = time.monotonic() + timeout
    while True:
        progress = capacity.advance_server(session, server_id, ctx)
        if progress.outcome != "retry":
            return progress
        assert time.monotonic() < deadline, progress
        time.sleep(progress.delay)


def cloud_servers(session, provider) -> list[Server]:
    return list(
        session.scalars(
            select(Server)
            .where(Server.cloud_provider_id == provider.id)
            .order_by(Server.created_at)
        )
    )


def test_demand_creates_one_server_row_before_any_api_call(session, settings, do):
    provider = make_provider(session, settings, do)
    box = make_box(session)
    requests_before = len(do.requests)
    message = capacity.request_capacity(session, box.id, encryption_key=settings.encryption_key)
    session.commit()
    assert message is not None and f"Creating a new server at {provider.name}" in message
    assert "ready in about 2 s" in message
    assert len(do.requests) == requests_before  # the row first; the API call is a task's
    (server,) = cloud_servers(session, provider)
    assert (server.state, server.cloud_size, server.price_monthly_cents) == (
        "creating",
        "s-2vcpu-4gb",
        2400,
    )
    assert (server.cpu_cores, server.ram_gb) == (2, 4)
    kinds = [e.kind for e in session.scalars(select(BoxEvent).where(BoxEvent.vibebox_id == box.id))]
    assert kinds == ["creating_server"]
    # The same box asking again counts on the server being created.
    again = capacity.request_capacity(session, box.id, encryption_key=settings.encryption_key)
    assert again is not None and "is being created" in again
    assert len(cloud_servers(session, provider)) == 1


def test_a_plan_without_a_size_uses_the_smallest_covering_rule(session, settings, do):
    provider = make_provider(session, settings, do)
    capacity.request_capacity(
        session, make_box(session, "pro").id, encryption_key=settings.encryption_key
    )
    (server,) = cloud_servers(session, provider)
    assert (server.cloud_size, server.cpu_cores, server.ram_gb, server.disk_gb) == (
        "s-4vcpu-8gb",
        4,
        8,
        160,
    )
    message = capacity.request_capacity(
        session, make_box(session, "enterprise").id, encryption_key=settings.encryption_key
    )
    assert message == f"capacity: provider {provider.name} has no size for the enterprise plan"


def test_maximum_and_budget_refusals_say_why(session, settings, do):
    provider = make_provider(session, settings, do, max_servers=1)
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    second = make_box(session)
    second.status = "waiting_for_capacity"
    first_waiting = session.scalars(select(VibeBox).where(VibeBox.id != second.id)).first()
    assert first_waiting is not None
    first_waiting.status = "waiting_for_capacity"
    session.commit()
    third = make_box(session)
    refused = capacity.request_capacity(session, third.id, encryption_key=settings.encryption_key)
    assert refused == f"capacity: provider {provider.name} reached its maximum of 1 servers"

    budget = make_provider(session, settings, do, monthly_budget_cents=3000)
    provider.enabled = False
    session.commit()
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    assert len(cloud_servers(session, budget)) == 1
    over = capacity.request_capacity(
        session, make_box(session).id, encryption_key=settings.encryption_key
    )
    assert over is not None and over.startswith(
        f"capacity: provider {budget.name} reached its monthly budget cap of $30.00"
    )


def test_bring_up_creates_the_droplet_pins_its_key_and_admits_it(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    (server,) = cloud_servers(session, provider)
    assert bring_up(session, server.id, ctx).outcome == "available"
    session.refresh(server)
    (droplet,) = do.live_droplets()
    assert (server.state, server.cloud_node_id, server.host) == (
        "available",
        str(droplet.id),
        droplet.address,
    )
    assert server.host_key_fingerprint == droplet.host_key_fingerprint  # pinned at first contact
    assert droplet.tags == ["vibebox", f"vibebox-server-{server.id}"]
    assert droplet.name == f"vibebox-{server.id}"
    assert session.get(CloudProvider, provider.id).ssh_key_id is not None
    assert capacity.advance_server(session, server.id, ctx).outcome == "skipped"  # idempotent


def test_a_crash_between_create_and_commit_leaks_no_droplet(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    (server,) = cloud_servers(session, provider)
    # The create call happened, our commit of the node id did not (SIGKILL in between).
    compute = ctx.compute_for(provider)
    node = compute.create_node(
        name=cloud.node_name(server.id),
        size="s-2vcpu-4gb",
        image="ubuntu-24-04-x64",
        ssh_key_id=None,
        tags=cloud.tags_for(server.id),
    )
    report = capacity.SweepReport()
    capacity.reconcile_orphans(session, provider, ctx, report)
    assert report.adopted == [node.id] and report.orphans == []
    session.refresh(server)
    assert server.cloud_node_id == node.id
    # A rerun of the creation without the adoption finds it by tag too: still one droplet.
    server.cloud_node_id = None
    session.commit()
    capacity.advance_server(session, server.id, ctx)
    assert len(do.live_droplets()) == 1


def test_orphans_are_destroyed_or_reported_per_policy(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    ghost = do.add_foreign_droplet(f"vibebox-{uuid.uuid4()}", ["vibebox"])
    foreign = do.add_foreign_droplet("someone-elses-web", ["web"])
    report_only = replace(
        ctx,
        settings=replace(ctx.settings, cloud=replace(ctx.settings.cloud, orphan_policy="report")),
    )
    report = capacity.SweepReport()
    capacity.reconcile_orphans(session, provider, report_only, report)
    assert report.orphans == [str(ghost.id)] and not ghost.deleted
    report = capacity.SweepReport()
    capacity.reconcile_orphans(session, provider, ctx, report)
    assert report.orphans == [str(ghost.id)] and ghost.deleted and not foreign.deleted


def test_sweep_refills_the_warm_pool_and_retires_idle_servers(session, settings, do, ctx):
    provider = make_provider(session, settings, do, warm_target=2, idle_retire_seconds=60)
    report = capacity.sweep(session, ctx)
    servers = cloud_servers(session, provider)
    assert len(report.created) == 2 and {s.state for s in servers} == {"creating"}
    assert {s.cloud_size for s in servers} == {"s-2vcpu-4gb"}  # the smallest plan's size
    assert capacity.sweep(session, ctx).created == []  # at target (being created counts)
    for server in servers:
        assert bring_up(session, server.id, ctx).outcome == "available"
    # Above the target now: one idle for long enough is retired, its droplet destroyed.
    provider.warm_target = 1
    servers[0].idle_since = datetime.now(UTC) - timedelta(seconds=120)
    session.commit()
    report = capacity.sweep(session, ctx)
    assert report.retiring == [servers[0].id]
    assert capacity.destroy_server(session, servers[0].id, ctx).outcome == "destroyed"
    session.refresh(servers[0])
    assert servers[0].state == "destroyed"
    gone = next(d for d in do.droplets.values() if str(d.id) == servers[0].cloud_node_id)
    assert gone.deleted
    states = {s.id: s.state for s in cloud_servers(session, provider)}
    assert states == {servers[0].id: "destroyed", servers[1].id: "available"}


def _waiting_box_with_its_server(session, settings, provider) -> tuple[VibeBox, Server]:
    box = make_box(session)
    capacity.request_capacity(session, box.id, encryption_key=settings.encryption_key)
    box.status = "waiting_for_capacity"  # as the engine leaves it, retrying much later
    box.next_retry_at = datetime.now(UTC) + timedelta(hours=1)
    session.commit()
    (server,) = cloud_servers(session, provider)
    return box, server


def _the_box_is_woken_and_gets_a_replacement(session, settings, do, ctx, provider, box) -> None:
    session.refresh(box)
    assert box.next_retry_at is not None and box.next_retry_at <= datetime.now(UTC)
    # The woken box asks again (the engine: allocation finds nothing, capacity is asked).
    assert pool.allocate_server(session, box) is None
    message = capacity.request_capacity(session, box.id, encryption_key=settings.encryption_key)
    session.commit()
    assert message is not None and f"Creating a new server at {provider.name}" in message
    gone, replacement = cloud_servers(session, provider)
    assert (gone.state, replacement.state) == ("destroyed", "creating")
    do.never_boot = do.never_answer = False
    assert bring_up(session, replacement.id, ctx).outcome == "available"
    allocated = pool.allocate_server(session, box)
    assert allocated is not None and allocated.id == replacement.id
    assert [str(d.id) for d in do.live_droplets()] == [replacement.cloud_node_id]


def test_a_node_that_never_boots_is_destroyed_and_replaced(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    box, server = _waiting_box_with_its_server(session, settings, provider)
    do.never_boot = True
    short = replace(
        ctx,
        settings=replace(ctx.settings, cloud=replace(ctx.settings.cloud, boot_timeout_seconds=1.5)),
    )
    assert bring_up(session, server.id, short).outcome == "destroyed"
    session.refresh(server)
    assert server.state == "destroyed" and "never became reachable" in (server.last_error or "")
    assert do.live_droplets() == []
    _the_box_is_woken_and_gets_a_replacement(session, settings, do, ctx, provider, box)


def test_a_node_whose_sshd_never_answers_is_destroyed_and_replaced(session, settings, do, ctx):
    """It has an address, but nothing answers there: refused connections are retried until
    the boot timeout (a booting node's sshd comes up after its address), then given up."""
    provider = make_provider(session, settings, do)
    box, server = _waiting_box_with_its_server(session, settings, provider)
    do.never_answer = True
    timeout = 3.0
    short = replace(
        ctx,
        settings=replace(
            ctx.settings, cloud=replace(ctx.settings.cloud, boot_timeout_seconds=timeout)
        ),
    )
    assert bring_up(session, server.id, short).outcome == "destroyed"
    assert datetime.now(UTC) - server.created_at >= timedelta(seconds=timeout)
    session.refresh(server)
    (droplet,) = [d for d in do.droplets.values() if str(d.id) == server.cloud_node_id]
    assert droplet.deleted and server.host == droplet.address  # it had an address
    assert server.host_key_fingerprint == ""  # never reached: nothing was pinned
    assert server.state == "destroyed" and "never became reachable" in (server.last_error or "")
    _the_box_is_woken_and_gets_a_replacement(session, settings, do, ctx, provider, box)


def test_rate_limited_creation_waits_for_the_reset(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    (server,) = cloud_servers(session, provider)
    do.rate_limit_next(1, reset_in=3)
    progress = capacity.advance_server(session, server.id, ctx)
    assert progress.outcome == "retry" and 1.0 <= progress.delay <= 3.5
    session.refresh(server)
    assert server.state == "creating" and "rate limited" in (server.last_error or "")


def test_a_cloud_server_an_operator_retired_has_its_droplet_destroyed(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    (server,) = cloud_servers(session, provider)
    assert bring_up(session, server.id, ctx).outcome == "available"
    pool.update_server(session, server.id, state="retired")
    session.commit()
    assert capacity.sweep(session, ctx).retiring == [server.id]
    assert capacity.destroy_server(session, server.id, ctx).outcome == "destroyed"
    assert do.live_droplets() == []


def test_server_errors_while_creating_are_retried(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    (server,) = cloud_servers(session, provider)
    do.fail_next(2, 503, "/v2/")
    progress = capacity.advance_server(session, server.id, ctx)
    assert progress.outcome == "retry" and 0.2 <= progress.delay <= 60
    assert bring_up(session, server.id, ctx).outcome == "available"
    assert len(do.live_droplets()) == 1


def test_a_refused_creation_gives_the_server_up_and_pauses_the_provider(session, settings, do, ctx):
    provider = make_provider(session, settings, do)
    do.droplet_limit = 0
    try:
        capacity.request_capacity(
            session, make_box(session).id, encryption_key=settings.encryption_key
        )
        session.commit()
        (server,) = cloud_servers(session, provider)
        assert capacity.advance_server(session, server.id, ctx).outcome == "destroyed"
    finally:
        do.droplet_limit = 25
    session.refresh(server)
    assert server.state == "destroyed" and "quota" in (server.last_error or "")
    message = capacity.request_capacity(
        session, make_box(session).id, encryption_key=settings.encryption_key
    )
    assert message is not None and message.startswith(
        f"capacity: provider {provider.name} refused to create a server"
    )
    assert len(cloud_servers(session, provider)) == 1  # no new attempt during the cooldown


def test_a_box_gets_a_server_only_from_a_provider_serving_its_region(session, settings, do):
    """``box_region`` is the VibeBox region (REGIONS) a provider serves; ``region`` is the
    cloud's own slug. A box of region cn never gets an intl server, and the created server
    carries the box's region, so allocation (region-exact) hands it to that box."""
    intl = make_provider(session, settings, do, box_region="intl")
    cn = make_provider(session, settings, do, box_region="cn")
    box = make_box(session)
    box.region = "cn"
    session.commit()
    message = capacity.request_capacity(session, box.id, encryption_key=settings.encryption_key)
    session.commit()
    assert message is not None and cn.name in message and intl.name not in message
    assert cloud_servers(session, intl) == []
    (server,) = cloud_servers(session, cn)
    assert (server.region, server.state) == ("cn", "creating")
    # A region no provider serves: nothing is created, the pool's own message applies.
    lone = make_box(session)
    lone.region = "eu"
    session.commit()
    refused = capacity.request_capacity(session, lone.id, encryption_key=settings.encryption_key)
    assert refused is None
    assert len(cloud_servers(session, cn)) == 1 and cloud_servers(session, intl) == []


def test_only_waiting_boxes_a_server_being_created_could_take_count_against_it(
    session, settings, do
):
    """A box shares a server being created with the boxes already waiting on it; a waiting
    box of another region, or of a plan such a server does not fit, waits on its own."""
    intl = make_provider(session, settings, do, box_region="intl")
    cn = make_provider(session, settings, do, box_region="cn")

    def ask(plan: str, region: str, *, then: str = "waiting_for_capacity") -> str | None:
        box = make_box(session, plan)
        box.region = region
        session.commit()
        message = capacity.request_capacity(session, box.id, encryption_key=settings.encryption_key)
        box.status = then  # the engine leaves a box waiting for what it asked
        session.commit()
        return message

    assert "Creating a new server" in (ask("basic", "intl") or "")
    # A second intl server is being created whose box found a place elsewhere meanwhile.
    assert "Creating a new server" in (ask("basic", "intl", then="terminated") or "")
    # Other waiting boxes: another region, and a plan no server being created fits.
    assert cn.name in (ask("basic", "cn") or "")
    pro = ask("pro", "intl")
    assert pro is not None and f"Creating a new server at {intl.name}" in pro
    sizes = sorted(s.cloud_size or "" for s in cloud_servers(session, intl))
    assert sizes == ["s-2vcpu-4gb", "s-2vcpu-4gb", "s-4vcpu-8gb"]
    # Two basic servers being created at intl, one intl basic box waiting on them: the
    # next intl basic box takes the other one rather than a third server.
    shared = ask("basic", "intl")
    assert shared is not None and "is being created" in shared, shared
    assert len(cloud_servers(session, intl)) == 3
    # ...and the one after it does need a new server.
    assert "Creating a new server" in (ask("basic", "intl") or "")
    assert len(cloud_servers(session, intl)) == 4
    assert len(cloud_servers(session, cn)) == 1


def test_providers_sharing_a_cloud_account_leave_each_others_nodes_alone(
    session, settings, do, ctx
):
    """Two providers on one account (say one per warm size) list the same tagged nodes: each
    sweep keeps the other's live nodes; a node nobody's row names is still an orphan."""
    tag = uuid.uuid4().hex[:6]
    small = make_provider(session, settings, do, name=f"a-small-{tag}")  # first by name
    big = make_provider(
        session, settings, do, name=f"b-big-{tag}", plan_sizes={"basic": "s-4vcpu-8gb"}
    )
    capacity.request_capacity(session, make_box(session).id, encryption_key=settings.encryption_key)
    session.commit()
    (server,) = cloud_servers(session, small)
    assert bring_up(session, server.id, ctx).outcome == "available"
    ghost = do.add_foreign_droplet(f"vibebox-{uuid.uuid4()}", ["vibebox"])
    report = capacity.SweepReport()
    capacity.reconcile_orphans(session, big, ctx, report)
    assert report.orphans == [str(ghost.id)] and ghost.deleted
    assert [str(d.id) for d in do.live_droplets()] == [server.cloud_node_id]
    session.refresh(server)
    assert server.state == "available"
    # Once its row is destroyed, a node left behind is an orphan for either provider.
    server.state = "destroyed"
    session.commit()
    report = capacity.SweepReport()
    capacity.reconcile_orphans(session, big, ctx, report)
    assert report.orphans == [server.cloud_node_id] and do.live_droplets() == []
