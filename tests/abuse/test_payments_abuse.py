"""Payment reproducers from the hardening review: what must not depend on timing or trust.

- A correctly signed Stripe ``checkout.session.completed`` without ``amount_total`` /
  ``currency`` used to pay the order unchecked: now it is flagged like a mismatch.
- Two orders of the same user and plan paid at the same moment used to give two
  subscriptions and two boxes (in 3 of 20 tries); paid one after the other they extend one
  subscription. The rule — one live subscription per user and plan, extended by every
  further order — now holds whatever the timing (20 users, both webhooks at once).
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from sqlalchemy import select

from app.db import db_session
from app.models import Order, Subscription, VibeBox
from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.e2e.conftest import wait_for_payment_events
from tests.e2e.test_payments import checkout, counts, order_doc, post_webhook
from tests.support.payments import stripe_double as sd


def test_signed_stripe_payment_without_amount_is_flagged_not_provisioned(
    make_user, payment_doubles
):
    user = make_user()
    started = checkout(user, "stripe")
    paid = payment_doubles.stripe.complete_session(payment_doubles.stripe.sessions()[-1]["id"])
    stripped = {k: v for k, v in paid.items() if k not in ("amount_total", "currency")}
    body, headers = sd.signed_webhook(
        sd.checkout_session_completed(stripped), STRIPE_WEBHOOK_SECRET
    )

    response = post_webhook(user, "stripe", body, headers)

    assert response.status_code == 400, response.get_data(as_text=True)
    assert order_doc(user, started["orderId"])["status"] == "pending"
    session = db_session()
    order = session.get(Order, uuid.UUID(started["orderId"]))
    assert order is not None and order.flag and "amount missing" in order.flag
    db_session.remove()
    assert counts(started["orderId"])[1] == 0  # no box


def test_two_orders_of_one_plan_paid_at_once_extend_one_subscription(
    make_user, payment_doubles, app
):
    users = [make_user() for _ in range(20)]
    deliveries: list[tuple[bytes, dict[str, str]]] = []
    orders: dict[uuid.UUID, list[str]] = {}
    for user in users:
        for _ in range(2):
            started = checkout(user, "stripe")
            orders.setdefault(user.user_id, []).append(started["orderId"])
            paid = payment_doubles.stripe.complete_session(
                payment_doubles.stripe.sessions()[-1]["id"]
            )
            deliveries.append(
                sd.signed_webhook(sd.checkout_session_completed(paid), STRIPE_WEBHOOK_SECRET)
            )

    statuses: list[int] = []
    barrier = threading.Barrier(len(deliveries))

    def deliver(body: bytes, headers: dict[str, str]) -> None:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.99.{len(statuses) % 250}.{id(body) % 250}"
        barrier.wait(timeout=60)
        statuses.append(
            client.post("/api/subscriptions/webhook/stripe", data=body, headers=headers).status_code
        )
        db_session.remove()

    threads = [threading.Thread(target=deliver, args=d) for d in deliveries]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200] * len(deliveries)
    wait_for_payment_events()  # the worker applies them, concurrently (-c of the fixture)

    session = db_session()
    for user in users:
        subs = session.scalars(
            select(Subscription).where(Subscription.user_id == user.user_id)
        ).all()
        assert len(subs) == 1, f"user {user.user_id}: {len(subs)} subscriptions"
        sub = subs[0]
        # Two monthly orders: two months, whichever order was applied first.
        length = sub.current_period_end - sub.current_period_start
        assert timedelta(days=55) < length < timedelta(days=63), length
        boxes = session.scalars(select(VibeBox).where(VibeBox.user_id == user.user_id)).all()
        assert len(boxes) == 1
        for order_id in orders[user.user_id]:
            order = session.get(Order, uuid.UUID(order_id))
            assert order is not None and order.status == "paid"
            assert order.subscription_id == sub.id
    db_session.remove()
