"""Lifecycle: control actions, pool health, subscription expiry and teardown - through the
API, a real worker (and beat), real sshd boxes and the Happy double."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from app.db import db_session
from app.extensions import get_redis
from app.integrations.happy import HappyClient
from app.models import Server, Subscription, VibeBox
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.e2e.conftest import provision, wait_for_payment_events
from tests.support.failpoints import PAUSE_KEY, PAUSED_KEY
from tests.support.payments import stripe_double as sd
from tests.support.sshd import BoxAccount
from tests.support.waiting import wait_until


def account_of(box_id: str) -> BoxAccount:
    account = BoxAccount.of_box(box_id)
    assert account is not None, f"box {box_id} has no Unix user"
    return account


def happy_status(happy_double, box_id: str) -> str | None:
    key = json.loads(account_of(box_id).access_key_path.read_text())
    machines = HappyClient(happy_double.url).list_machines(
        key["token"], base64.b64decode(key["secret"])
    )
    assert len(machines) == 1
    return machines[0].daemon_status


def daemon_pid(box_id: str) -> int | None:
    account = BoxAccount.of_box(box_id)
    if account is None:
        return None
    try:
        return int(json.loads(account.daemon_state_path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not a running daemon
        return f.read().split()[2] != "Z"


def server_state(port: int) -> Server:
    session = db_session()
    server = session.scalars(select(Server).where(Server.ssh_port == port)).one()
    db_session.remove()
    return server


def control(user, box_id: str, action: str):
    return user.post(f"/api/vibeboxes/{box_id}/control", json={"action": action})


def running_box(admin, make_user, add_to_pool, sshbox):  # type: ignore[no-untyped-def]
    add_to_pool(sshbox)
    user = make_user()
    box_id = provision(admin, user)
    assert user.wait_for(box_id, {"running", "error"})["status"] == "running"
    return user, box_id


def test_stop_start_restart_are_confirmed_against_happy(
    admin, make_user, add_to_pool, box, happy_double
):
    user, box_id = running_box(admin, make_user, add_to_pool, box)

    response = control(user, box_id, "stop")
    assert response.status_code == 202 and response.get_json()["status"] == "stopping"
    assert user.wait_for(box_id, {"stopped", "error"})["status"] == "stopped"
    assert not pid_alive(daemon_pid(box_id))
    assert happy_status(happy_double, box_id) != "running"

    assert control(user, box_id, "start").get_json()["status"] == "starting"
    assert user.wait_for(box_id, {"running", "error"})["status"] == "running"
    assert pid_alive(daemon_pid(box_id)) and happy_status(happy_double, box_id) == "running"

    before = daemon_pid(box_id)
    assert control(user, box_id, "restart").get_json()["status"] == "restarting"
    assert user.wait_for(box_id, {"running", "error"})["status"] == "running"
    after = daemon_pid(box_id)
    assert after != before and pid_alive(after) and not pid_alive(before)
    assert happy_status(happy_double, box_id) == "running"


def test_invalid_double_and_foreign_actions(admin, make_user, add_to_pool, box, celery_worker):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    stranger = make_user()
    invalid = control(user, box_id, "start")
    assert invalid.status_code == 409
    assert invalid.get_json()["code"] == "invalid_transition"
    assert invalid.get_json()["status"] == "running"
    assert control(user, box_id, "explode").status_code == 422
    assert control(stranger, box_id, "stop").status_code == 404

    celery_worker.stop()  # hold the first action in flight
    try:
        assert control(user, box_id, "stop").status_code == 202
        busy = control(user, box_id, "restart")
        assert busy.status_code == 409
        assert busy.get_json()["code"] == "action_in_progress"
        assert busy.get_json()["status"] == "stopping"
    finally:
        celery_worker.start()
    assert user.wait_for(box_id, {"stopped", "error"})["status"] == "stopped"


def test_dead_sshd_becomes_unhealthy_is_not_allocated_and_recovers(
    admin, make_user, add_to_pool, box, settings
):
    from workers.maintenance import health_sweep

    (server_id,) = add_to_pool(box)
    box.stop()
    for expected_failures in (1, 2):
        health_sweep.delay()
        wait_until(
            lambda n=expected_failures: server_state(box.port).consecutive_failures >= n,
            20,
            f"{expected_failures} failed probes",
        )
    server = server_state(box.port)
    assert server.state == "unhealthy" and server.last_error and server.last_checked_at

    user = make_user()
    box_id = provision(admin, user)
    assert user.wait_for(box_id, {"waiting_for_capacity", "running"})["status"] == (
        "waiting_for_capacity"
    )

    box.start()
    health_sweep.delay()
    # Recovery goes through a verified scrub, then the waiting box takes the server.
    assert user.wait_for(box_id, {"running", "error"}, timeout=60)["status"] == "running"
    server = server_state(box.port)
    assert server.id == server_id and server.state == "allocated"
    assert server.last_latency_ms is not None and server.consecutive_failures == 0


def test_allocated_server_failing_probes_marks_its_box_degraded(admin, make_user, add_to_pool, box):
    from workers.maintenance import health_sweep

    user, box_id = running_box(admin, make_user, add_to_pool, box)
    box.stop()
    health_sweep.delay()
    wait_until(lambda: user.box(box_id)["degraded"], 20, "degraded")
    doc = user.box(box_id)
    assert doc["status"] == "running" and doc["degradedSince"]
    assert server_state(box.port).state == "allocated"  # never pulled from under the owner
    box.start()
    health_sweep.delay()
    wait_until(lambda: not user.box(box_id)["degraded"], 20, "recovered")


def _paid_stripe_box(make_user, add_to_pool, sshbox, payment_doubles):  # type: ignore[no-untyped-def]
    add_to_pool(sshbox)
    user = make_user()
    started = user.post(
        "/api/subscriptions/checkout",
        json={"planId": "basic", "billingCycle": "monthly", "provider": "stripe"},
    ).get_json()
    paid = payment_doubles.stripe.complete_session(payment_doubles.stripe.sessions()[-1]["id"])
    body, headers = sd.signed_webhook(sd.checkout_session_completed(paid), STRIPE_WEBHOOK_SECRET)
    assert (
        user.client.post(
            "/api/subscriptions/webhook/stripe", data=body, headers=headers
        ).status_code
        == 200
    )
    wait_for_payment_events()  # the worker applies the recorded payment
    order = user.get(f"/api/orders/{started['orderId']}").get_json()
    assert user.wait_for(order["vibeBoxId"], {"running", "error"})["status"] == "running"
    return user, order, paid


def _lapse(subscription_id: str) -> None:
    now = datetime.now(UTC)
    session = db_session()
    session.execute(
        update(Subscription)
        .where(Subscription.id == uuid.UUID(subscription_id))
        .values(
            current_period_start=now - timedelta(days=31),
            current_period_end=now - timedelta(seconds=5),
        )
    )
    session.commit()
    db_session.remove()


def test_expired_subscription_is_torn_down_wiped_and_the_server_reused(
    admin, make_user, add_to_pool, box, payment_doubles, happy_double
):
    from workers.maintenance import expire_subscriptions

    user, order, _ = _paid_stripe_box(make_user, add_to_pool, box, payment_doubles)
    box_id = order["vibeBoxId"]
    old = account_of(box_id)
    old_pid = daemon_pid(box_id)
    _lapse(order["subscriptionId"])
    expire_subscriptions.delay()

    doc = user.wait_for(box_id, {"terminated"}, timeout=60)
    assert [s["name"] for s in doc["timeline"]][-3:] == [
        "stop_daemon",
        "wipe_credentials",
        "verify_clean",
    ]
    assert not old.access_key_path.exists() and not old.exists() and old.pids() == []
    assert not pid_alive(old_pid)
    subs = user.get("/api/subscriptions").get_json()["subscriptions"]
    assert subs[0]["status"] == "expired"
    wait_until(lambda: server_state(box.port).state == "available", 30, "server back in the pool")
    assert user.post(f"/api/vibeboxes/{box_id}/connect").status_code == 409

    newcomer = make_user()
    new_box = provision(admin, newcomer)
    assert newcomer.wait_for(new_box, {"running", "error"})["status"] == "running"
    session = db_session()
    assert session.get(VibeBox, uuid.UUID(new_box)).server_id == server_state(box.port).id
    db_session.remove()
    # The new owner's user and credentials, nothing of the old ones.
    new = account_of(new_box)
    assert new.name != old.name and new.access_key_path.exists()


def test_renewal_between_expiry_and_teardown_keeps_the_box(
    make_user, add_to_pool, box, payment_doubles, celery_worker
):
    from workers.maintenance import expire_subscription

    user, order, paid = _paid_stripe_box(make_user, add_to_pool, box, payment_doubles)
    box_id = order["vibeBoxId"]
    pid = daemon_pid(box_id)
    _lapse(order["subscriptionId"])

    celery_worker.stop()  # the teardown is queued but has not begun
    try:
        assert expire_subscription.run(order["subscriptionId"]) == 1
        assert user.box(box_id)["status"] == "terminating"
        invoice = payment_doubles.stripe.renew_subscription(paid["subscription"])
        body, headers = sd.signed_webhook(sd.invoice_paid_for(invoice), STRIPE_WEBHOOK_SECRET)
        renewed = user.client.post("/api/subscriptions/webhook/stripe", data=body, headers=headers)
        assert renewed.status_code == 200  # recorded; a job applies it
    finally:
        celery_worker.start()  # two jobs queued: the teardown's and the renewal's, either first

    doc = wait_until(
        lambda: (d := user.box(box_id))["status"] != "terminating" and d, 30, "teardown decision"
    )
    assert doc["status"] == "running"
    assert all(s["state"] == "skipped" for s in doc["timeline"][-3:])
    assert account_of(box_id).access_key_path.exists()
    assert daemon_pid(box_id) == pid and pid_alive(pid)
    assert user.get("/api/subscriptions").get_json()["subscriptions"][0]["status"] == "active"


def test_teardown_interrupted_by_worker_sigkill_still_completes(
    make_user, add_to_pool, box, payment_doubles, celery_worker, celery_beat, settings
):
    from workers.maintenance import expire_subscriptions

    user, order, _ = _paid_stripe_box(make_user, add_to_pool, box, payment_doubles)
    account = account_of(order["vibeBoxId"])
    redis = get_redis(settings.redis_url)
    redis.set(PAUSE_KEY.format(user.user_id), "wipe_credentials", ex=120)
    _lapse(order["subscriptionId"])
    expire_subscriptions.delay()
    wait_until(lambda: redis.get(PAUSED_KEY.format(user.user_id)), 30, "pause in wipe")
    celery_worker.kill()
    redis.delete(PAUSE_KEY.format(user.user_id))
    celery_worker.start()

    assert user.wait_for(order["vibeBoxId"], {"terminated"}, timeout=90)["status"] == "terminated"
    assert not account.exists() and account.pids() == []
    wait_until(lambda: server_state(box.port).state == "available", 30, "server back in the pool")


def test_a_lost_control_message_and_a_server_stuck_in_cleaning_are_reconciled(
    admin, make_user, add_to_pool, box, box_fleet, celery_worker, celery_beat
):
    from workers import celery_app

    user, box_id = running_box(admin, make_user, add_to_pool, box)
    spare = box_fleet.new_box()
    try:
        (spare_id,) = add_to_pool(spare)
        celery_worker.stop()
        try:
            assert control(user, box_id, "stop").status_code == 202
            celery_app.control.purge()  # the action's message is lost
            session = db_session()
            session.execute(update(Server).where(Server.id == spare_id).values(state="cleaning"))
            session.commit()
            db_session.remove()
        finally:
            celery_worker.start()
        # Nothing is queued any more: only the beat reconciler can finish these.
        assert user.wait_for(box_id, {"stopped", "error"}, timeout=60)["status"] == "stopped"
        wait_until(lambda: server_state(spare.port).state == "available", 60, "cleaning done")
    finally:
        box_fleet.remove(spare)


def test_a_start_with_broken_credentials_on_the_box_is_diagnosed_and_repaired(
    admin, make_user, add_to_pool, box
):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    assert control(user, box_id, "stop").status_code == 202
    assert user.wait_for(box_id, {"stopped", "error"})["status"] == "stopped"
    # Someone broke the credentials on the box: base64url is "no credentials" to the CLI.
    account = account_of(box_id)
    good = account.access_key_path.read_text()
    key = json.loads(good)
    key["secret"] = key["secret"].replace("+", "-").replace("/", "_").rstrip("=")
    account.access_key_path.write_text(json.dumps(key))
    assert control(user, box_id, "start").status_code == 202
    doc = user.wait_for(box_id, {"running", "error"})
    assert doc["status"] == "running", doc  # the evidence said "key file changed": rewritten
    assert json.loads(account.access_key_path.read_text()) == json.loads(good)


def test_a_control_action_that_cannot_succeed_ends_in_a_readable_error(
    admin, make_user, add_to_pool, box, happy_double
):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    assert control(user, box_id, "stop").status_code == 202
    assert user.wait_for(box_id, {"stopped", "error"})["status"] == "stopped"
    happy_double.fail_next(10_000, status=503, path="/v1/machines")
    try:
        assert control(user, box_id, "start").status_code == 202
        doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
    finally:
        happy_double.reset_faults()
    assert doc["status"] == "error"
    assert doc["lastError"].startswith("The Happy daemon did not start")
    assert "503" in doc["lastError"]  # what the daemon's log said, for the operator


def test_admin_terminate_tears_down_and_returns_the_server(admin, make_user, add_to_pool, box):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    assert user.post(f"/api/admin/vibeboxes/{box_id}/terminate").status_code == 403
    response = admin.post(f"/api/admin/vibeboxes/{box_id}/terminate")
    assert response.status_code == 202
    assert response.get_json()["vibeBox"]["status"] == "terminating"
    account = account_of(box_id)
    assert user.wait_for(box_id, {"terminated"}, timeout=60)["status"] == "terminated"
    assert not account.exists() and not account.access_key_path.exists()
    wait_until(lambda: server_state(box.port).state == "available", 30, "server back in the pool")
    again = admin.post(f"/api/admin/vibeboxes/{box_id}/terminate")
    assert again.status_code == 202 and again.get_json()["vibeBox"]["status"] == "terminated"
    assert admin.post(f"/api/admin/vibeboxes/{uuid.uuid4()}/terminate").status_code == 404


def test_a_server_that_cannot_be_cleaned_is_quarantined_after_the_retry_budget(
    add_to_pool, box, celery_worker
):
    from workers.maintenance import clean_server

    (server_id,) = add_to_pool(box)
    session = db_session()
    session.execute(update(Server).where(Server.id == server_id).values(state="cleaning"))
    session.commit()
    db_session.remove()
    box.stop()  # unreachable: every attempt is a transient fault
    clean_server.delay(str(server_id))
    server = wait_until(
        lambda: (s := server_state(box.port)).state == "unhealthy" and s, 90, "quarantine"
    )
    assert "cleaning gave up" in (server.last_error or "")
    assert "raised unexpected: ServerQuarantinedError" in celery_worker.tail(4000)
