"""Cloud capacity end to end: a real worker (and beat), the DigitalOcean double driven by the
real libcloud driver, droplets that are real sshd machines, the Happy double."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.db import db_session
from app.extensions import get_redis
from app.integrations import cloud
from app.models import CloudProvider, Server
from app.services.capacity import cloud_providers
from tests.e2e.conftest import _fresh_address, provision
from tests.support.do_double import DigitalOceanDouble
from tests.support.failpoints import CLOUD_PAUSE_KEY, CLOUD_PAUSED_KEY
from tests.support.waiting import wait_until


@pytest.fixture
def do(do_double: DigitalOceanDouble, live) -> Iterator[DigitalOceanDouble]:  # type: ignore[no-untyped-def]
    do_double.reset_faults()
    yield do_double
    do_double.reset_faults()
    compute = cloud.LibcloudCompute(
        cloud.CloudAccount("digitalocean", {"key": do_double.token}, "nyc1", do_double.url)
    )
    for droplet in do_double.live_droplets():
        compute.destroy_node(str(droplet.id))


def add_provider(settings, do: DigitalOceanDouble, **overrides) -> CloudProvider:  # type: ignore[no-untyped-def]
    values = {
        "name": f"do-{uuid.uuid4().hex[:6]}",
        "driver": "digitalocean",
        "region": "nyc1",
        "image": "ubuntu-24-04-x64",
        "plan_sizes": {"basic": "s-2vcpu-4gb", "pro": "s-4vcpu-8gb"},
        "size_prices": {"s-2vcpu-4gb": 2400, "s-4vcpu-8gb": 4800},
        "ssh_port": do.ssh_port,
        "login_user": do.login_user,
        "api_base_url": do.url,
        "boot_seconds": 2,
    }
    values.update(overrides)
    session = db_session()
    provider = cloud_providers.add_provider(
        session, encryption_key=settings.encryption_key, credentials={"key": do.token}, **values
    )
    session.commit()
    db_session.remove()
    return provider


def cloud_servers() -> list[Server]:
    db_session.remove()
    return list(db_session().scalars(select(Server).where(Server.cloud_provider_id.is_not(None))))


def test_empty_pool_paid_box_gets_a_new_droplet_and_runs(
    admin, make_user, do, celery_worker, settings
):
    add_provider(settings, do)
    user = make_user()
    started = time.monotonic()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"running", "error"}, timeout=120)
    assert doc["status"] == "running", doc
    kinds = [e["kind"] for e in doc.get("events", [])]
    assert "creating_server" in kinds, doc
    creating = next(e for e in doc["events"] if e["kind"] == "creating_server")
    assert "ready in about 2 s" in creating["message"]
    (server,) = cloud_servers()
    (droplet,) = do.live_droplets()
    assert (server.state, server.cloud_node_id, server.host) == (
        "allocated",
        str(droplet.id),
        droplet.address,
    )
    assert server.host_key_fingerprint == droplet.host_key_fingerprint
    # cloud-init user data with the provider's key went with the create request.
    assert droplet.user_data is not None and droplet.user_data.startswith("#cloud-config")
    assert droplet.user_data.count("ssh-ed25519 ") == 1
    print(
        f"paid-to-running with on-demand creation: {time.monotonic() - started:.1f}s "
        f"(simulated boot delay {do.boot_delay}s)"
    )


def test_maximum_reached_leaves_the_box_waiting_with_a_clear_message(
    admin, make_user, do, celery_worker, settings
):
    provider = add_provider(settings, do, max_servers=0)
    user = make_user()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"waiting_for_capacity"}, timeout=30)
    deadline = time.monotonic() + 10
    while "maximum" not in (doc.get("lastError") or "") and time.monotonic() < deadline:
        time.sleep(0.3)
        doc = user.box(box_id)
    assert (
        doc["lastError"] == f"capacity: provider {provider.name} reached its maximum of 0 servers"
    )
    assert do.live_droplets() == [] and cloud_servers() == []


def test_sigkill_between_create_and_commit_leaks_no_droplet(
    admin, make_user, do, celery_worker, celery_beat, settings
):
    redis = get_redis(settings.redis_url)
    redis.set(CLOUD_PAUSE_KEY, "1", ex=120)
    try:
        add_provider(settings, do)
        user = make_user()
        box_id = provision(admin, user)
        deadline = time.monotonic() + 30
        while redis.get(CLOUD_PAUSED_KEY) is None:
            assert time.monotonic() < deadline, "creation never reached the pause"
            time.sleep(0.1)
        (server,) = cloud_servers()
        assert server.state == "creating" and server.cloud_node_id is None  # not committed
        celery_worker.kill()  # between the create call and our commit
    finally:
        redis.delete(CLOUD_PAUSE_KEY, CLOUD_PAUSED_KEY)
    # The killed runner's lock would expire after LOCK_SECONDS; a test does not wait that out.
    redis.delete(f"vibebox:lock:cloud:{server.id}")
    celery_worker.start()
    doc = user.wait_for(box_id, {"running", "error"}, timeout=120)
    assert doc["status"] == "running", doc
    (server,) = cloud_servers()
    tagged = [d for d in do.live_droplets() if cloud.server_tag(server.id) in d.tags]
    assert [str(d.id) for d in tagged] == [server.cloud_node_id]  # adopted, not duplicated
    assert len(do.live_droplets()) == 1


def test_beat_keeps_the_warm_pool_retires_idle_servers_and_destroys_orphans(
    admin, make_user, do, celery_worker, celery_beat, settings
):
    provider = add_provider(settings, do, warm_target=1, idle_retire_seconds=0)
    orphan = do.add_foreign_droplet(f"vibebox-{uuid.uuid4()}", [cloud.TAG])

    def wait(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)

    # Beat's sweep creates the warm server, the worker brings it up; the orphan is destroyed.
    wait(lambda: [s.state for s in cloud_servers()] == ["available"], "a warm server")
    wait(lambda: orphan.deleted, "the orphan to be destroyed")
    (warm,) = cloud_servers()

    # A paid box takes the warm server at once (no creation on its path).
    user = make_user()
    started = time.monotonic()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
    assert doc["status"] == "running", doc
    assert "creating_server" not in [e["kind"] for e in doc.get("events", [])]
    print(f"paid-to-running with a warm server: {time.monotonic() - started:.1f}s")
    # ...and the sweep refills the pool behind it.
    wait(
        lambda: sorted(s.state for s in cloud_servers()) == ["allocated", "available"],
        "the warm pool refilled",
    )

    # Warm target 0: idle servers retire (idle_retire_seconds=0) and their droplets go.
    session = db_session()
    cloud_providers.update_provider(
        session, provider.id, encryption_key=settings.encryption_key, warm_target=0
    )
    session.commit()
    db_session.remove()
    wait(
        lambda: sorted(s.state for s in cloud_servers()) == ["allocated", "destroyed"],
        "the idle server retired",
    )
    (kept,) = [s for s in cloud_servers() if s.state == "allocated"]
    assert kept.id == warm.id
    assert [str(d.id) for d in do.live_droplets()] == [warm.cloud_node_id]


def test_budget_cap_below_the_size_price_leaves_the_box_waiting_until_it_is_raised(
    admin, make_user, do, celery_worker, settings
):
    # A basic box needs an s-2vcpu-4gb ($24.00 a month); the cap is $10.00.
    provider = add_provider(settings, do, monthly_budget_cents=1000)
    creates_before = do.create_attempts()
    user = make_user()
    box_id = provision(admin, user)
    refusal = (
        f"capacity: provider {provider.name} reached its monthly budget cap of $10.00 "
        "($0.00 committed, a s-2vcpu-4gb server costs $24.00)"
    )

    def refused() -> dict | None:  # type: ignore[type-arg]
        doc = user.box(box_id)
        return doc if doc["lastError"] == refusal else None

    doc = wait_until(refused, 60, "the budget refusal on the box")
    assert doc["status"] == "waiting_for_capacity", doc
    waiting_steps = [s for s in doc["timeline"] if s["lastError"] == refusal]
    assert waiting_steps, doc["timeline"]
    assert "creating_server" not in [e["kind"] for e in doc.get("events", [])]
    # Still refused a few retries later (CAPACITY_RETRY_MAX_SECONDS is 1 s here): each retry
    # asks again and is refused again; nothing is created.
    retries: set[str] = set()

    def asked_again() -> bool:
        retries.add(str(user.box(box_id)["nextRetryAt"]))
        return len(retries) >= 3

    wait_until(asked_again, 60, "more capacity retries")
    doc = user.box(box_id)
    assert (doc["status"], doc["lastError"]) == ("waiting_for_capacity", refusal)
    assert do.live_droplets() == [] and cloud_servers() == []
    assert do.create_attempts() == creates_before

    # The operator raises the cap (admin API): the waiting box gets a server and runs.
    _fresh_address(admin.client)
    response = admin.client.patch(
        f"/api/admin/cloud-providers/{provider.id}",
        headers=admin.headers,
        json={"monthlyBudgetCents": 5000},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["monthlyBudgetCents"] == 5000
    doc = user.wait_for(box_id, {"running", "error"}, timeout=120)
    assert doc["status"] == "running", doc
    assert "creating_server" in [e["kind"] for e in doc.get("events", [])]
    (server,) = cloud_servers()
    (droplet,) = do.live_droplets()
    assert (server.cloud_node_id, server.price_monthly_cents) == (str(droplet.id), 2400)
    assert do.create_attempts() == creates_before + 1


def test_rate_limit_then_server_error_on_create_still_gives_one_droplet_and_a_running_box(
    admin, make_user, do, celery_worker, settings
):
    add_provider(settings, do)
    # The first creation is rate limited (429, ratelimit-reset 3 s ahead, no Retry-After),
    # the second answers 503, the third succeeds; every other request answers normally.
    do.fail_next_creates(1, 429, reset_in=3)
    do.fail_next_creates(1, 503)
    creates_before = do.create_attempts()
    user = make_user()
    box_id = provision(admin, user)

    server_errors: set[str] = set()  # the cloud server's record of each wait, as it happens
    box_messages: set[str] = set()  # what the box's owner was shown meanwhile

    def running() -> dict | None:  # type: ignore[type-arg]
        for server in cloud_servers():
            if server.last_error:
                server_errors.add(server.last_error)
        doc = user.box(box_id)
        box_messages.add(doc.get("lastError") or "")
        box_messages.update(s["lastError"] or "" for s in doc["timeline"])
        box_messages.update(e["message"] for e in doc.get("events", []))
        return doc if doc["status"] in {"running", "error"} else None

    doc = wait_until(running, 180, "the box to run", interval=0.05)
    assert doc["status"] == "running", doc
    assert do.create_attempts() == creates_before + 3  # 429, 503, then created
    (server,) = cloud_servers()
    (droplet,) = do.live_droplets()  # no leak, no duplicate
    assert server.cloud_node_id == str(droplet.id)
    assert cloud.server_tag(server.id) in droplet.tags
    assert server.state == "allocated" and server.consecutive_failures == 0
    # The waits were recorded on the server while they lasted (cleared once available).
    assert any("rate limited" in e for e in server_errors), server_errors
    assert any("HTTP 503" in e for e in server_errors), server_errors
    assert "creating_server" in [e["kind"] for e in doc.get("events", [])]
    # The owner saw the waits too, in words safe for users (no provider text).
    assert any("asked us to slow down" in m for m in box_messages), sorted(box_messages)
    assert any("temporary problem" in m for m in box_messages), sorted(box_messages)
    assert not any("HTTP 503" in m for m in box_messages), sorted(box_messages)


def test_a_lost_create_answer_adopts_the_droplet_instead_of_making_a_second(
    admin, make_user, do, celery_worker, settings
):
    add_provider(settings, do)
    # The droplet is made, but the answer to the create is a 502: the retry must find the
    # droplet by its server tag rather than create another.
    do.lose_next_create_answers(1, 502)
    creates_before = do.create_attempts()
    user = make_user()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"running", "error"}, timeout=180)
    assert doc["status"] == "running", doc
    assert do.create_attempts() == creates_before + 1  # no second create
    (server,) = cloud_servers()
    (droplet,) = do.live_droplets()
    assert server.cloud_node_id == str(droplet.id)
    assert cloud.server_tag(server.id) in droplet.tags
    # Found again by its tag: the bring-up's retry looks the server tag up, unless beat's
    # capacity sweep adopted the droplet (listing every droplet with our tag) first.
    lookups = [p for m, p in list(do.requests) if m == "GET" and cloud.TAG in p]
    assert len(lookups) >= 2, lookups  # before the create, and again after the 502
