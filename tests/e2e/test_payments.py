"""Money and provisioning agree: checkout -> signed webhook -> paid -> running box, through
the API, the real worker, real sshd boxes and local doubles that sign like the providers."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db import db_session
from app.models import Order, PaymentEvent, Subscription, VibeBox
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.e2e.conftest import wait_for_payment_events
from tests.support.payments import stripe_double as sd
from tests.support.sshd import BoxAccount


def checkout(user, provider: str, plan: str = "basic", cycle: str = "monthly") -> dict:
    response = user.post(
        "/api/subscriptions/checkout",
        json={"planId": plan, "billingCycle": cycle, "provider": provider},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def order_doc(user, order_id: str) -> dict:
    response = user.get(f"/api/orders/{order_id}")
    assert response.status_code == 200
    return response.get_json()


def post_webhook(user, provider: str, body: bytes, headers: dict[str, str]):
    """Deliver a webhook, then wait (bounded) until the worker applied what it recorded."""
    response = user.client.post(
        f"/api/subscriptions/webhook/{provider}", data=body, headers=headers
    )
    wait_for_payment_events()
    return response


def counts(order_id: str) -> tuple[int, int]:
    session = db_session()
    oid = uuid.UUID(order_id)
    events = session.scalar(
        select(func.count()).select_from(PaymentEvent).where(PaymentEvent.order_id == oid)
    )
    boxes = session.scalar(select(func.count()).select_from(VibeBox).where(VibeBox.order_id == oid))
    db_session.remove()
    return events, boxes


def stripe_paid_webhook(payment_doubles, session_id: str):
    paid = payment_doubles.stripe.complete_session(session_id)
    body, headers = sd.signed_webhook(sd.checkout_session_completed(paid), STRIPE_WEBHOOK_SECRET)
    return paid, body, headers


def test_stripe_checkout_webhook_paid_box_running(make_user, add_to_pool, box, payment_doubles):
    add_to_pool(box)
    user = make_user()
    started = checkout(user, "stripe")
    assert started["checkoutUrl"] and started["amount"] == 2900 and started["currency"] == "USD"
    session_id = payment_doubles.stripe.sessions()[-1]["id"]

    paid, body, headers = stripe_paid_webhook(payment_doubles, session_id)
    assert post_webhook(user, "stripe", body, headers).status_code == 200
    order = order_doc(user, started["orderId"])
    assert order["status"] == "paid" and order["vibeBoxId"]
    doc = user.wait_for(order["vibeBoxId"], {"running", "error"})
    assert doc["status"] == "running", doc

    # Renewal: the period moves to the one Stripe billed.
    session = db_session()
    sub = session.get(Subscription, uuid.UUID(order["subscriptionId"]))
    end_before = sub.current_period_end
    db_session.remove()
    invoice = payment_doubles.stripe.renew_subscription(paid["subscription"])
    body, headers = sd.signed_webhook(sd.invoice_paid_for(invoice), STRIPE_WEBHOOK_SECRET)
    assert post_webhook(user, "stripe", body, headers).status_code == 200
    session = db_session()
    sub = session.get(Subscription, uuid.UUID(order["subscriptionId"]))
    assert sub.current_period_end > end_before
    db_session.remove()

    # Cancellation at period end, then deletion.
    stripe_sub = payment_doubles.stripe.subscription(paid["subscription"])
    for event in (sd.subscription_updated(stripe_sub), sd.subscription_deleted(stripe_sub)):
        body, headers = sd.signed_webhook(event, STRIPE_WEBHOOK_SECRET)
        assert post_webhook(user, "stripe", body, headers).status_code == 200
    subs = user.get("/api/subscriptions").get_json()["subscriptions"]
    assert subs[0]["cancelAtPeriodEnd"] is True and subs[0]["status"] == "canceled"


def test_wechat_checkout_notification_paid_box_running(
    make_user, add_to_pool, box, payment_doubles
):
    add_to_pool(box)
    user = make_user()
    started = checkout(user, "wechat", plan="basic")
    assert started["qrCodeUrl"] and started["currency"] == "CNY" and started["amount"] == 19900
    out_trade_no = started["orderId"].replace("-", "")
    payment_doubles.wechat.pay(out_trade_no)
    headers, body = payment_doubles.wechat.notification(out_trade_no)
    response = post_webhook(user, "wechat", body, headers)
    assert response.status_code in (200, 204)
    order = order_doc(user, started["orderId"])
    assert order["status"] == "paid"
    doc = user.wait_for(order["vibeBoxId"], {"running", "error"})
    assert doc["status"] == "running", doc


def test_alipay_checkout_notify_paid_box_running(make_user, add_to_pool, box, payment_doubles):
    from tests.support.payments.alipay_double import NOTIFY_HEADERS

    add_to_pool(box)
    user = make_user()
    started = checkout(user, "alipay", plan="basic")
    assert started["qrCodeUrl"] and started["currency"] == "CNY" and started["amount"] == 19900
    body = payment_doubles.alipay.pay(started["orderId"].replace("-", ""))
    response = post_webhook(user, "alipay", body, NOTIFY_HEADERS)
    assert response.status_code == 200 and response.get_data() == b"success"
    # Alipay retries until it reads `success`: a redelivery is a no-op with the same answer.
    again = post_webhook(user, "alipay", body, NOTIFY_HEADERS)
    assert again.get_data() == b"success"
    order = order_doc(user, started["orderId"])
    assert order["status"] == "paid"
    assert counts(started["orderId"]) == (1, 1)
    doc = user.wait_for(order["vibeBoxId"], {"running", "error"})
    assert doc["status"] == "running", doc


def test_alipay_forged_notify_is_failure_and_pays_nothing(make_user, payment_doubles):
    from tests.support.payments import alipay_double as ad

    user = make_user()
    started = checkout(user, "alipay")
    ref = started["orderId"].replace("-", "")
    forged = ad.build_notify(
        ref,
        alipay_private_key=ad.make_keys().alipay_private,
        app_id=ad.DEFAULT_APP_ID,
        seller_id=ad.DEFAULT_SELLER_ID,
        total_amount="199.00",
    )
    response = post_webhook(user, "alipay", forged, ad.NOTIFY_HEADERS)
    assert response.status_code == 400 and response.get_data() == b"failure"
    assert order_doc(user, started["orderId"])["status"] == "pending"
    assert counts(started["orderId"]) == (0, 0)


def test_dev_checkout_to_running(make_user, add_to_pool, box):
    add_to_pool(box)
    user = make_user()
    started = checkout(user, "dev")
    url = started["checkoutUrl"].split("://", 1)[1].split("/", 1)[1]
    assert user.client.post("/" + url).status_code == 303  # to the return URL
    wait_for_payment_events()  # the worker applies the payment; the box appears
    order = order_doc(user, started["orderId"])
    assert user.wait_for(order["vibeBoxId"], {"running", "error"})["status"] == "running"


def test_bad_stripe_webhooks_pay_nothing(make_user, payment_doubles):
    user = make_user()
    started = checkout(user, "stripe")
    session_id = payment_doubles.stripe.sessions()[-1]["id"]
    paid = payment_doubles.stripe.complete_session(session_id)
    event = sd.checkout_session_completed(paid)
    body, headers = sd.signed_webhook(event, STRIPE_WEBHOOK_SECRET)
    stale_body, stale_headers = sd.signed_webhook(
        event, STRIPE_WEBHOOK_SECRET, timestamp=int(time.time()) - 301
    )
    _, wrong_headers = sd.signed_webhook(event, "whsec_someone_else")
    tampered = body.replace(b'"amount_total": 2900', b'"amount_total": 1')
    assert tampered != body
    unknown = dict(
        paid,
        metadata={**paid["metadata"], "orderId": str(uuid.uuid4())},
        client_reference_id=None,
        id="cs_unknown",
    )
    unknown_body, unknown_headers = sd.signed_webhook(
        sd.checkout_session_completed(unknown), STRIPE_WEBHOOK_SECRET
    )
    cases = {
        "forged": (body, {**headers, "Stripe-Signature": "t=1,v1=deadbeef"}),
        "wrong secret": (body, wrong_headers),
        "stale": (stale_body, stale_headers),
        "tampered amount": (tampered, headers),
        "malformed": (b"{not json", headers),
        "unknown order": (unknown_body, unknown_headers),
    }
    for name, (payload, hdrs) in cases.items():
        response = post_webhook(user, "stripe", payload, hdrs)
        assert 400 <= response.status_code < 500, name
    assert order_doc(user, started["orderId"])["status"] == "pending"
    assert counts(started["orderId"]) == (0, 0)


def test_wechat_tampered_amount_is_flagged_not_provisioned(make_user, payment_doubles):
    user = make_user()
    started = checkout(user, "wechat")
    out_trade_no = started["orderId"].replace("-", "")
    payment_doubles.wechat.pay(out_trade_no)
    # Correctly signed by the platform, but for another amount: the service must catch it.
    headers, body = payment_doubles.wechat.notification(out_trade_no, amount=1)
    assert post_webhook(user, "wechat", body, headers).status_code == 400
    stale_headers, stale_body = payment_doubles.wechat.notification(
        out_trade_no, timestamp=int(time.time()) - 301
    )
    assert post_webhook(user, "wechat", stale_body, stale_headers).status_code == 400
    assert order_doc(user, started["orderId"])["status"] == "pending"
    session = db_session()
    flagged = session.get(Order, uuid.UUID(started["orderId"]))
    assert flagged.flag and "amount mismatch" in flagged.flag
    db_session.remove()
    assert counts(started["orderId"])[1] == 0


def test_same_event_five_times_including_concurrently_gives_one_box(
    make_user, add_to_pool, box, payment_doubles, app
):
    add_to_pool(box)
    user = make_user()
    started = checkout(user, "stripe")
    session_id = payment_doubles.stripe.sessions()[-1]["id"]
    _, body, headers = stripe_paid_webhook(payment_doubles, session_id)

    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def deliver() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/api/subscriptions/webhook/stripe", data=body, headers=headers)
        statuses.append(response.status_code)
        db_session.remove()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses.append(post_webhook(user, "stripe", body, headers).status_code)
    assert statuses == [200] * 5
    assert counts(started["orderId"]) == (1, 1)
    order = order_doc(user, started["orderId"])
    assert user.wait_for(order["vibeBoxId"], {"running", "error"})["status"] == "running"


def test_renewal_before_checkout_event_is_applied_later(make_user, payment_doubles):
    user = make_user()
    started = checkout(user, "stripe")
    session_id = payment_doubles.stripe.sessions()[-1]["id"]
    paid = payment_doubles.stripe.complete_session(session_id)
    invoice = payment_doubles.stripe.renew_subscription(paid["subscription"])
    renewal_body, renewal_headers = sd.signed_webhook(
        sd.invoice_paid_for(invoice), STRIPE_WEBHOOK_SECRET
    )
    # The renewal overtakes the checkout event: accepted, kept, not misapplied.
    assert post_webhook(user, "stripe", renewal_body, renewal_headers).status_code == 200
    assert order_doc(user, started["orderId"])["status"] == "pending"
    body, headers = sd.signed_webhook(sd.checkout_session_completed(paid), STRIPE_WEBHOOK_SECRET)
    assert post_webhook(user, "stripe", body, headers).status_code == 200
    order = order_doc(user, started["orderId"])
    session = db_session()
    sub = session.get(Subscription, uuid.UUID(order["subscriptionId"]))
    renewed_end = invoice["lines"]["data"][0]["period"]["end"]
    assert int(sub.current_period_end.timestamp()) == renewed_end
    assert (
        session.scalar(
            select(func.count())
            .select_from(PaymentEvent)
            .where(PaymentEvent.processed_at.is_(None))
        )
        == 0
    )
    db_session.remove()


@pytest.mark.parametrize("trigger", ["beat task", "cli"])
def test_paid_order_whose_webhook_never_arrived_is_reconciled(
    make_user, add_to_pool, box, payment_doubles, app, trigger
):
    add_to_pool(box)
    user = make_user()
    started = checkout(user, "stripe")
    payment_doubles.stripe.complete_session(payment_doubles.stripe.sessions()[-1]["id"])
    session = db_session()
    session.execute(
        update(Order)
        .where(Order.id == uuid.UUID(started["orderId"]))
        .values(created_at=Order.created_at - timedelta(hours=1))
    )
    session.commit()
    db_session.remove()

    if trigger == "beat task":
        from workers.billing import reconcile_orders

        reconcile_orders.delay()
    else:
        result = app.test_cli_runner().invoke(args=["orders", "reconcile"])
        assert result.exit_code == 0, result.output
        assert f"{started['orderId']}: paid" in result.output

    deadline = time.monotonic() + 30
    while order_doc(user, started["orderId"])["status"] != "paid":
        assert time.monotonic() < deadline, "order never reconciled"
        time.sleep(0.2)
    order = order_doc(user, started["orderId"])
    assert user.wait_for(order["vibeBoxId"], {"running", "error"})["status"] == "running"


def test_a_full_refund_takes_the_box_back_and_frees_the_server(
    make_user, add_to_pool, box, payment_doubles
):
    from tests.support.payments import alipay_double as ad

    add_to_pool(box)
    user = make_user()
    started = checkout(user, "alipay")
    ref = started["orderId"].replace("-", "")
    assert (
        post_webhook(user, "alipay", payment_doubles.alipay.pay(ref), ad.NOTIFY_HEADERS).status_code
        == 200
    )
    order = order_doc(user, started["orderId"])
    assert user.wait_for(order["vibeBoxId"], {"running", "error"})["status"] == "running"

    refund = ad.build_notify(
        ref,
        alipay_private_key=payment_doubles.alipay_private_key,
        app_id=ad.DEFAULT_APP_ID,
        seller_id=ad.DEFAULT_SELLER_ID,
        total_amount="199.00",
        trade_status="TRADE_CLOSED",
        extra={"refund_fee": "199.00", "gmt_refund": "2026-11-26 18:00:00.123"},
    )
    response = post_webhook(user, "alipay", refund, ad.NOTIFY_HEADERS)
    assert response.status_code == 200 and response.get_data() == b"success"
    assert order_doc(user, started["orderId"])["status"] == "refunded"
    account = BoxAccount.of_box(order["vibeBoxId"])
    assert user.wait_for(order["vibeBoxId"], {"terminated"}, timeout=60)["status"] == "terminated"
    assert account is not None and not account.exists() and account.pids() == []
    subs = user.get("/api/subscriptions").get_json()["subscriptions"]
    assert subs[0]["status"] == "canceled"
