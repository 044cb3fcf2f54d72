"""Plans, checkout, orders and the webhook path, with the dev provider (in-process)."""

from __future__ import annotations

import uuid
from urllib.parse import urlparse

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select

from app.models import Order, PaymentEvent, VibeBox
from tests.factories import UserFactory


@pytest.fixture
def stripe_disabled(app, monkeypatch):
    """The app as if STRIPE_* settings were missing at start-up."""
    registry = app.extensions["vibebox.payments"]
    monkeypatch.delitem(registry.enabled, "stripe")
    monkeypatch.setitem(registry.disabled, "stripe", "STRIPE_SECRET_KEY not set")


@pytest.fixture
def user_headers(app):
    def make():
        user = UserFactory()
        with app.app_context():
            token = create_access_token(identity=user)
        return user, {"Authorization": f"Bearer {token}"}

    return make


def start(client, headers, **body):
    payload = {"planId": "basic", "billingCycle": "monthly", "provider": "dev"}
    payload.update(body)
    return client.post("/api/subscriptions/checkout", json=payload, headers=headers)


def test_plans_are_public_and_complete(client):
    response = client.get("/api/subscriptions/plans")
    assert response.status_code == 200
    plans = {p["id"]: p for p in response.get_json()["plans"]}
    assert list(plans) == ["basic", "pro", "enterprise"]
    basic = plans["basic"]
    assert basic["priceMonthly"] == 2900 and basic["priceYearly"] == 29000
    assert basic["currency"] == "USD" and basic["priceMonthlyCny"] > 0
    assert basic["cpuCores"] == 2 and basic["ramGb"] == 4 and basic["diskGb"] == 40
    assert basic["claudeApiQuota"] == 10 and basic["features"]


@pytest.mark.parametrize(
    ("body", "status", "field_or_code"),
    [
        ({"planId": "gold"}, 422, "planId"),
        ({"billingCycle": "weekly"}, 422, "billingCycle"),
        ({"provider": "paypal"}, 422, "provider"),
        ({"amount": 1}, 422, "amount"),  # the client never sets the price
    ],
)
def test_checkout_rejects_bad_input(client, user_headers, body, status, field_or_code):
    _, headers = user_headers()
    response = start(client, headers, **body)
    assert response.status_code == status, response.get_json()
    payload = response.get_json()
    if status == 422:
        assert field_or_code in payload["errors"]
    else:
        assert payload["code"] == field_or_code


def test_checkout_with_an_unconfigured_provider_is_409(client, user_headers, stripe_disabled):
    _, headers = user_headers()
    response = start(client, headers, provider="stripe")
    assert response.status_code == 409
    assert response.get_json()["code"] == "payment_provider_unavailable"
    assert "not configured" in response.get_json()["message"]


def test_checkout_needs_login(client):
    assert start(client, {}).status_code == 401


def test_dev_checkout_pays_through_the_webhook_path(client, user_headers, session):
    user, headers = user_headers()
    response = start(client, headers)
    assert response.status_code == 201
    body = response.get_json()
    assert body["amount"] == 2900 and body["currency"] == "USD" and body["qrCodeUrl"] is None
    order_id = body["orderId"]

    order = client.get(f"/api/orders/{order_id}", headers=headers).get_json()
    assert order["status"] == "pending" and order["vibeBoxId"] is None

    url = urlparse(body["checkoutUrl"])
    page = client.get(f"{url.path}?{url.query}")
    assert page.status_code == 200 and b"Pay" in page.data
    forged = client.post(f"{url.path}?sig=00")
    assert forged.status_code == 404
    paid = client.post(f"{url.path}?{url.query}")
    assert paid.status_code == 303  # to the return URL

    order = client.get(f"/api/orders/{order_id}", headers=headers).get_json()
    assert order["status"] == "paid" and order["paidAt"]
    box_id = uuid.UUID(order["vibeBoxId"])
    box = session.get(VibeBox, box_id)
    assert box.user_id == user.id and box.order_id == uuid.UUID(order_id)
    subs = client.get("/api/subscriptions", headers=headers).get_json()["subscriptions"]
    assert [s["status"] for s in subs] == ["active"]


def test_forged_dev_webhook_is_400_and_pays_nothing(client, user_headers, session):
    _, headers = user_headers()
    order_id = start(client, headers).get_json()["orderId"]
    for body in (
        {"orderId": order_id, "signature": "0" * 64},
        {"orderId": order_id},
        "not json",
    ):
        response = client.post(
            "/api/subscriptions/webhook/dev",
            json=body if isinstance(body, dict) else None,
            data=None if isinstance(body, dict) else body,
        )
        assert response.status_code == 400
    assert session.get(Order, uuid.UUID(order_id)).status == "pending"
    assert session.scalar(select(func.count()).select_from(PaymentEvent)) == 0


def test_webhook_for_a_provider_that_is_not_enabled_is_409(client, stripe_disabled):
    response = client.post("/api/subscriptions/webhook/stripe", data=b"{}")
    assert response.status_code == 409
    assert response.get_json()["code"] == "payment_provider_unavailable"


def test_the_same_webhook_five_times_gives_one_event_and_one_box(
    client, user_headers, session, app
):
    _, headers = user_headers()
    order_id = start(client, headers).get_json()["orderId"]
    provider = app.extensions["vibebox.payments"].get("dev")
    body = provider.completion_body(order_id)
    for _ in range(5):
        response = client.post(
            "/api/subscriptions/webhook/dev", data=body, content_type="application/json"
        )
        assert response.status_code == 200
    oid = uuid.UUID(order_id)
    assert session.scalar(select(func.count()).select_from(PaymentEvent)) == 1
    assert (
        session.scalar(select(func.count()).select_from(VibeBox).where(VibeBox.order_id == oid))
        == 1
    )


def test_orders_are_owner_only(client, user_headers):
    _, owner = user_headers()
    _, stranger = user_headers()
    order_id = start(client, owner).get_json()["orderId"]
    assert client.get(f"/api/orders/{order_id}", headers=stranger).status_code == 404
    assert client.get(f"/api/orders/{uuid.uuid4()}", headers=owner).status_code == 404


def _paid_subscription(client, user_headers, app):
    _, headers = user_headers()
    order_id = start(client, headers).get_json()["orderId"]
    provider = app.extensions["vibebox.payments"].get("dev")
    client.post(
        "/api/subscriptions/webhook/dev",
        data=provider.completion_body(order_id),
        content_type="application/json",
    )
    order = client.get(f"/api/orders/{order_id}", headers=headers).get_json()
    return order["subscriptionId"], headers


def test_admin_cancels_at_period_end_then_now(client, user_headers, app):
    from tests.factories import AdminFactory

    sub_id, user_h = _paid_subscription(client, user_headers, app)
    admin = AdminFactory()
    with app.app_context():
        admin_h = {"Authorization": f"Bearer {create_access_token(identity=admin)}"}
    url = f"/api/admin/subscriptions/{sub_id}/cancel"
    assert client.post(url, json={}, headers=user_h).status_code == 403

    later = client.post(url, json={"atPeriodEnd": True}, headers=admin_h)
    assert later.status_code == 200
    assert later.get_json()["cancelAtPeriodEnd"] is True and later.get_json()["status"] == "active"

    now = client.post(url, json={"atPeriodEnd": False}, headers=admin_h)
    assert now.status_code == 200 and now.get_json()["status"] == "canceled"
    again = client.post(url, json={"atPeriodEnd": False}, headers=admin_h)
    assert again.status_code == 409 and again.get_json()["code"] == "subscription_not_active"
    missing = client.post(
        f"/api/admin/subscriptions/{uuid.uuid4()}/cancel", json={}, headers=admin_h
    )
    assert missing.status_code == 404
    bad = client.post(url, json={"atPeriodEnd": "soon"}, headers=admin_h)
    assert bad.status_code == 422


def test_a_provider_missing_settings_is_disabled_with_a_clear_reason(settings, caplog):
    from dataclasses import replace

    from app.integrations.payments.registry import build_registry

    registry = build_registry(
        replace(settings, payment_providers=("dev", "stripe", "wechat", "alipay")), env={}
    )
    assert set(registry.enabled) == {"dev"}
    assert "STRIPE_SECRET_KEY" in registry.disabled["stripe"]
    assert "WECHAT_PAY_MCHID" in registry.disabled["wechat"]
    assert "ALIPAY_APP_ID" in registry.disabled["alipay"]
    assert "payment provider stripe disabled" in caplog.text
