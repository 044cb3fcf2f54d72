"""Billing service: events recorded once, applied in one transaction, in any order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.errors import AmountMismatchError, UnknownOrderError, ValidationError
from app.integrations.payments.base import (
    CheckoutRequest,
    CheckoutSession,
    EventKind,
    ProviderEvent,
)
from app.models import Order, PaymentEvent, Subscription, VibeBox
from app.services import billing
from tests.factories import UserFactory


class FakeProvider:
    """Records create_order calls; enough for the service (the real ones have own tests)."""

    def __init__(self, name: str = "stripe") -> None:
        self.name = name
        self.requests: list[CheckoutRequest] = []
        self.canceled: list[tuple[str, bool]] = []

    def create_order(self, request: CheckoutRequest) -> CheckoutSession:
        self.requests.append(request)
        return CheckoutSession(
            provider_order_id=f"cs_{request.order_ref}", checkout_url="https://pay"
        )

    def cancel_subscription(self, sub_id: str, *, at_period_end: bool) -> None:
        self.canceled.append((sub_id, at_period_end))


def checkout(session, user, provider=None, plan="basic", cycle="monthly"):
    order, _ = billing.start_checkout(
        session,
        user=user,
        plan_id=plan,
        billing_cycle=cycle,
        provider=provider or FakeProvider(),
        notify_url="http://api/webhook",
        return_url="http://app/",
    )
    session.commit()
    return order


def paid(order: Order, event_id: str = "evt_1", **kw) -> ProviderEvent:
    fields = {
        "provider": order.provider,
        "event_id": event_id,
        "type": "checkout.session.completed",
        "kind": EventKind.PAID,
        "order_id": str(order.id),
        "provider_order_id": order.provider_order_id,
        "amount": order.amount,
        "currency": order.currency,
    }
    fields.update(kw)
    return ProviderEvent(**fields)


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def test_checkout_takes_amount_and_currency_from_the_plan(session):
    user = UserFactory()
    provider = FakeProvider("stripe")
    order = checkout(session, user, provider, plan="pro", cycle="yearly")
    assert (order.amount, order.currency, order.status) == (79000, "USD", "pending")
    assert provider.requests[0].amount == 79000
    assert order.provider_order_id == f"cs_{order.id.hex}"


def test_checkout_in_cny_for_china_providers(session):
    order = checkout(session, UserFactory(), FakeProvider("wechat"))
    assert (order.amount, order.currency) == (19900, "CNY")


def test_checkout_unknown_plan_is_a_field_error(session):
    with pytest.raises(ValidationError) as info:
        checkout(session, UserFactory(), plan="platinum")
    assert "planId" in info.value.errors


def test_paid_event_marks_order_creates_subscription_and_one_box(session):
    order = checkout(session, UserFactory())
    outcome = billing.record_event(session, paid(order, provider_subscription_id="sub_1"))
    session.commit()
    assert order.status == "paid" and order.paid_at is not None
    sub = session.get(Subscription, order.subscription_id)
    assert sub.status == "active" and sub.payment_subscription_id == "sub_1"
    assert sub.current_period_end - sub.current_period_start >= timedelta(days=28)
    box = session.scalars(select(VibeBox).where(VibeBox.order_id == order.id)).one()
    assert outcome.boxes_to_provision == [box.id]
    assert box.status == "pending" and box.subscription_id == sub.id


def test_the_same_event_twice_is_a_no_op(session):
    order = checkout(session, UserFactory())
    billing.record_event(session, paid(order))
    again = billing.record_event(session, paid(order))
    session.commit()
    assert again.duplicate and again.boxes_to_provision == []
    assert count(session, PaymentEvent, PaymentEvent.order_id == order.id) == 1
    assert count(session, VibeBox, VibeBox.order_id == order.id) == 1


def test_a_second_paid_event_for_a_paid_order_adds_nothing(session):
    order = checkout(session, UserFactory())
    billing.record_event(session, paid(order, "evt_checkout"))
    second = billing.record_event(session, paid(order, "evt_invoice", type="invoice.paid"))
    session.commit()
    assert second.boxes_to_provision == [] and second.note == "order already paid"
    assert count(session, VibeBox, VibeBox.order_id == order.id) == 1


def test_unknown_order_records_nothing(session):
    event = ProviderEvent(
        provider="stripe",
        event_id="evt_x",
        type="checkout.session.completed",
        kind=EventKind.PAID,
        order_id=str(uuid.uuid4()),
        amount=2900,
        currency="USD",
    )
    with pytest.raises(UnknownOrderError):
        billing.record_event(session, event)
    session.rollback()
    assert count(session, PaymentEvent, PaymentEvent.event_id == "evt_x") == 0


def test_amount_mismatch_flags_the_order_and_provisions_nothing(session):
    order = checkout(session, UserFactory())
    with pytest.raises(AmountMismatchError):
        billing.record_event(session, paid(order, amount=1))
    session.commit()
    assert order.status == "pending"
    assert "amount mismatch" in order.flag
    assert count(session, VibeBox, VibeBox.order_id == order.id) == 0


def test_renewal_extends_the_period(session):
    order = checkout(session, UserFactory())
    billing.record_event(session, paid(order, provider_subscription_id="sub_r"))
    sub = session.get(Subscription, order.subscription_id)
    new_end = sub.current_period_end + timedelta(days=30)
    billing.record_event(
        session,
        ProviderEvent(
            provider="stripe",
            event_id="evt_renew",
            type="invoice.paid",
            kind=EventKind.RENEWED,
            provider_subscription_id="sub_r",
            period_end=new_end,
        ),
    )
    session.commit()
    assert sub.current_period_end == new_end


def test_renewal_and_cancel_before_checkout_are_deferred_then_applied(session):
    order = checkout(session, UserFactory())
    future_end = datetime.now(UTC) + timedelta(days=62)
    early = billing.record_event(
        session,
        ProviderEvent(
            provider="stripe",
            event_id="evt_early_renew",
            type="invoice.paid",
            kind=EventKind.RENEWED,
            provider_subscription_id="sub_ooo",
            period_end=future_end,
        ),
    )
    billing.record_event(
        session,
        ProviderEvent(
            provider="stripe",
            event_id="evt_early_cancel",
            type="customer.subscription.updated",
            kind=EventKind.CANCEL_AT_PERIOD_END,
            provider_subscription_id="sub_ooo",
        ),
    )
    session.commit()
    assert early.note and early.note.startswith("deferred")
    pending = session.scalars(select(PaymentEvent).where(PaymentEvent.subject == "sub_ooo")).all()
    assert all(e.processed_at is None for e in pending)

    billing.record_event(session, paid(order, provider_subscription_id="sub_ooo"))
    session.commit()
    sub = session.get(Subscription, order.subscription_id)
    assert sub.current_period_end == future_end
    assert sub.cancel_at_period_end is True
    assert all(e.processed_at is not None for e in pending)


def test_buying_again_with_an_active_subscription_extends_it(session):
    user = UserFactory()
    first = checkout(session, user)
    billing.record_event(session, paid(first, "evt_a"))
    sub = session.get(Subscription, first.subscription_id)
    end = sub.current_period_end
    second = checkout(session, user)
    outcome = billing.record_event(session, paid(second, "evt_b"))
    session.commit()
    assert second.subscription_id == sub.id
    assert sub.current_period_end > end + timedelta(days=27)
    assert outcome.boxes_to_provision == []  # the live box keeps serving
    assert count(session, Subscription, Subscription.user_id == user.id) == 1


def test_cancel_now_and_at_period_end(session):
    order = checkout(session, UserFactory())
    billing.record_event(session, paid(order, provider_subscription_id="sub_c"))
    provider = FakeProvider()
    sub = billing.cancel_subscription(
        session, order.subscription_id, at_period_end=True, provider=provider
    )
    assert sub.cancel_at_period_end and sub.status == "active"
    assert provider.canceled == [("sub_c", True)]
    sub = billing.cancel_subscription(
        session, order.subscription_id, at_period_end=False, provider=provider
    )
    assert sub.status == "canceled" and sub.canceled_at is not None
    assert sub.current_period_end <= datetime.now(UTC)


def test_payment_failed_marks_pending_order_failed(session):
    order = checkout(session, UserFactory())
    billing.record_event(
        session,
        ProviderEvent(
            provider="stripe",
            event_id="evt_fail",
            type="checkout.session.async_payment_failed",
            kind=EventKind.PAYMENT_FAILED,
            order_id=str(order.id),
        ),
    )
    session.commit()
    assert order.status == "failed"


def test_stale_pending_orders(session):
    order = checkout(session, UserFactory())
    assert order.id not in billing.stale_pending_orders(session, older_than=3600)
    order.created_at = datetime.now(UTC) - timedelta(hours=2)
    session.commit()
    assert order.id in billing.stale_pending_orders(session, older_than=3600)


def refund(order: Order, event_id: str = "evt_refund", **kw) -> ProviderEvent:
    fields = {
        "provider": order.provider,
        "event_id": event_id,
        "type": "refund",
        "kind": EventKind.REFUNDED,
        "order_id": str(order.id),
        "amount": order.amount,
        "currency": order.currency,
    }
    fields.update(kw)
    return ProviderEvent(**fields)


def test_a_full_refund_ends_the_subscription_and_its_box(session):
    order = checkout(session, UserFactory())
    billing.record_event(session, paid(order))
    box = session.scalars(select(VibeBox).where(VibeBox.order_id == order.id)).one()
    outcome = billing.record_event(session, refund(order))
    session.commit()
    sub = session.get(Subscription, order.subscription_id)
    assert order.status == "refunded"
    assert sub.status == "canceled"
    assert box.status == "terminated"  # never got a server: nothing remote to undo
    assert outcome.boxes_to_teardown == []
    # A late or repeated PAID for the refunded order fulfils nothing.
    late = billing.record_event(session, paid(order, "evt_late"))
    assert late.boxes_to_provision == [] and order.status == "refunded"


def test_refunding_an_extension_only_takes_back_its_period(session):
    user = UserFactory()
    first = checkout(session, user)
    billing.record_event(session, paid(first, "evt_1"))
    sub = session.get(Subscription, first.subscription_id)
    end_before = sub.current_period_end
    second = checkout(session, user)
    billing.record_event(session, paid(second, "evt_2"))
    assert sub.current_period_end > end_before
    billing.record_event(session, refund(second))
    session.commit()
    assert sub.status == "active"
    assert abs((sub.current_period_end - end_before).total_seconds()) < 5
    assert second.status == "refunded" and first.status == "paid"


def test_a_partial_refund_changes_nothing(session):
    order = checkout(session, UserFactory())
    billing.record_event(session, paid(order))
    outcome = billing.record_event(session, refund(order, amount=100))
    session.commit()
    assert order.status == "paid"
    assert session.get(Subscription, order.subscription_id).status == "active"
    assert outcome.boxes_to_teardown == []


# --- webhook intake (record, commit, answer) and the task that applies the event ---------


def _recorded(session, order: Order) -> PaymentEvent:
    return session.scalars(select(PaymentEvent).where(PaymentEvent.order_id == order.id)).one()


def test_intake_records_the_event_and_enqueues_its_application_only(session):
    from app.services import jobs
    from app.services.jobs import PaymentJob

    order = checkout(session, UserFactory())
    outcome = billing.intake_event(session, paid(order))
    record = _recorded(session, order)
    assert jobs.pending(session)[-1] == PaymentJob(str(record.id))
    assert order.status == "pending" and record.processed_at is None
    assert not outcome.duplicate
    session.commit()

    assert billing.apply_recorded_event(session, record.id) == "applied"
    session.commit()
    assert order.status == "paid" and record.processed_at is not None
    assert count(session, VibeBox, VibeBox.order_id == order.id) == 1


def test_applying_an_event_twice_pays_once(session):
    order = checkout(session, UserFactory())
    billing.intake_event(session, paid(order))
    record = _recorded(session, order)
    billing.apply_recorded_event(session, record.id)
    assert billing.apply_recorded_event(session, record.id) == "already done"
    session.commit()
    assert count(session, VibeBox, VibeBox.order_id == order.id) == 1
    assert count(session, Subscription, Subscription.user_id == order.user_id) == 1


def test_a_redelivery_before_the_task_ran_is_a_duplicate(session):
    order = checkout(session, UserFactory())
    billing.intake_event(session, paid(order))
    again = billing.intake_event(session, paid(order))
    assert again.duplicate
    assert count(session, PaymentEvent, PaymentEvent.order_id == order.id) == 1


def test_intake_refuses_an_unknown_order_and_records_nothing(session):
    order = checkout(session, UserFactory())
    stranger = paid(order, "evt_stranger", order_id=str(uuid.uuid4()), provider_order_id="cs_x")
    with pytest.raises(UnknownOrderError):
        billing.intake_event(session, stranger)
    assert count(session, PaymentEvent, PaymentEvent.event_id == "evt_stranger") == 0


def test_intake_flags_a_wrong_amount_at_once(session):
    order = checkout(session, UserFactory())
    with pytest.raises(AmountMismatchError):
        billing.intake_event(session, paid(order, amount=1))
    assert order.status == "pending" and "amount mismatch" in order.flag
    assert _recorded(session, order).processed_at is not None


def test_unapplied_events_are_found_for_the_reconciler_after_the_delay(session):
    order = checkout(session, UserFactory())
    billing.intake_event(session, paid(order))
    record = _recorded(session, order)
    assert record.id not in billing.unapplied_events(session, older_than=60)
    record.received_at = datetime.now(UTC) - timedelta(seconds=120)
    session.flush()
    assert record.id in billing.unapplied_events(session, older_than=60)
    billing.apply_recorded_event(session, record.id)
    session.flush()
    assert record.id not in billing.unapplied_events(session, older_than=60)


def test_intake_of_a_payment_is_two_statements(session, db):
    from sqlalchemy import event as sa_event

    order = checkout(session, UserFactory())
    session.commit()
    session.expunge_all()  # as in a request: nothing of the order in the session yet
    seen: list[str] = []

    def note(_conn, _cursor, statement: str, *_args) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            seen.append(statement)

    sa_event.listen(db, "before_cursor_execute", note)
    try:
        billing.intake_event(session, paid(order))
    finally:
        sa_event.remove(db, "before_cursor_execute", note)
    assert len(seen) == 2, seen
    assert seen[1].lstrip().startswith("INSERT INTO payment_events")
