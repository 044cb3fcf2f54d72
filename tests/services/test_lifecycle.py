"""Which subscriptions end, when, and what happens to their boxes (database only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from app.models import Server, Subscription, VibeBox
from app.services.boxes import engine, lifecycle, provisioning
from tests.factories import UserFactory

DAY = timedelta(days=1)


def subscription(session, *, end_offset: timedelta, status="active", cancel_at_period_end=False):
    user = UserFactory()
    now = datetime.now(UTC)
    sub = Subscription(
        id=uuid.uuid4(),
        user_id=user.id,
        plan_id="basic",
        status=status,
        billing_cycle="monthly",
        payment_provider="stripe",
        current_period_start=now + end_offset - 30 * DAY,
        current_period_end=now + end_offset,
        cancel_at_period_end=cancel_at_period_end,
    )
    session.add(sub)
    session.flush()
    return sub


def box_on_server(session, sub) -> VibeBox:
    server = Server(
        host="127.0.0.1",
        ssh_port=2200 + hash(sub.id) % 1000,
        ssh_user=f"u{sub.id.hex[:6]}",
        auth_method="key",
        credential_encrypted=b"x",
        host_key_fingerprint="SHA256:x",
        cpu_cores=2,
        ram_gb=4,
        disk_gb=40,
        state="allocated",
    )
    session.add(server)
    session.flush()
    box = provisioning.create_vibebox(
        session, user_id=sub.user_id, plan_id="basic", subscription_id=sub.id
    )
    box.server_id = server.id
    box.status = "running"
    for step in box.steps:
        step.state = "succeeded"
    session.flush()
    return box


def test_due_respects_the_grace_period_for_lapsed_payments(session):
    within_grace = subscription(session, end_offset=-1 * DAY)
    beyond_grace = subscription(session, end_offset=-4 * DAY)
    current = subscription(session, end_offset=10 * DAY)
    due = lifecycle.due_subscriptions(session, grace_seconds=3 * 86400)
    assert beyond_grace.id in due
    assert within_grace.id not in due and current.id not in due


def test_cancel_at_period_end_ends_at_the_period_end_without_grace(session):
    ending = subscription(session, end_offset=-timedelta(seconds=5), cancel_at_period_end=True)
    assert ending.id in lifecycle.due_subscriptions(session, grace_seconds=3 * 86400)
    lifecycle.expire_subscription(session, ending.id, grace_seconds=3 * 86400)
    assert ending.status == "canceled" and ending.canceled_at is not None


def test_expiry_starts_the_teardown_of_live_boxes_once(session):
    sub = subscription(session, end_offset=-4 * DAY)
    box = box_on_server(session, sub)
    assert lifecycle.expire_subscription(session, sub.id, grace_seconds=86400) == [box.id]
    assert sub.status == "expired" and box.status == "terminating"
    assert [s.name for s in box.steps if s.state == "pending"] == list(provisioning.TEARDOWN_STEPS)
    assert box.resume_status == "running"
    # Idempotent: a second sweep finds nothing more to do.
    assert lifecycle.expire_subscription(session, sub.id, grace_seconds=86400) == []
    assert sub.id not in lifecycle.due_subscriptions(session, grace_seconds=86400)


def test_a_box_that_never_had_a_server_just_ends(session):
    sub = subscription(session, end_offset=-4 * DAY)
    box = provisioning.create_vibebox(
        session, user_id=sub.user_id, plan_id="basic", subscription_id=sub.id
    )
    assert lifecycle.expire_subscription(session, sub.id, grace_seconds=0) == []
    assert box.status == "terminated"
    assert {s.state for s in box.steps} == {"skipped"}


def test_a_renewed_subscription_is_left_alone(session):
    sub = subscription(session, end_offset=-4 * DAY)
    box_on_server(session, sub)
    sub.current_period_end = datetime.now(UTC) + 30 * DAY  # renewal landed
    assert lifecycle.expire_subscription(session, sub.id, grace_seconds=0) == []
    assert sub.status == "active"


def test_cancel_teardown_restores_the_previous_status(session):
    sub = subscription(session, end_offset=-4 * DAY)
    box = box_on_server(session, sub)
    lifecycle.expire_subscription(session, sub.id, grace_seconds=0)
    assert engine.cancel_teardown(session, box) is None
    assert box.status == "running" and box.resume_status is None
    assert all(s.state == "skipped" for s in box.steps if s.name in provisioning.TEARDOWN_STEPS)


def test_probe_failures_mark_the_live_box_degraded_and_recovery_clears_it(session):
    sub = subscription(session, end_offset=10 * DAY)
    box = box_on_server(session, sub)
    lifecycle.record_server_probe_for_box(
        session, box.server_id, ok=False, latency_ms=None, error="refused", unhealthy_after=2
    )
    assert box.degraded_since is not None
    server = session.get(Server, box.server_id)
    assert server.state == "allocated"  # never pulled from under its owner
    lifecycle.record_server_probe_for_box(
        session, box.server_id, ok=True, latency_ms=3, error=None, unhealthy_after=2
    )
    assert box.degraded_since is None
