"""Applying a recorded payment event: order paid, subscription made or extended, box made."""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import AmountMismatchError, UnknownOrderError
from app.integrations.payments.base import EventKind, ProviderEvent
from app.models import Order, PaymentEvent, Subscription, VibeBox
from app.services.billing.event_records import (
    EventOutcome,
    _deserialize,
    _insert_once,
    _locked_order,
    _processed,
)
from app.services.billing.quotas import LIVE_BOX_STATUSES, LIVE_SUBSCRIPTION_STATUSES
from app.services.billing.subscriptions import (
    _cancel_now,
    _on_cancel_at_period_end,
    _on_canceled,
    _on_payment_failed,
    _on_renewed,
    cycle_delta,
)
from app.services.boxes import engine, provisioning
from app.services.boxes.statuses import BoxStatus
from app.timeutil import utcnow

log = logging.getLogger(__name__)


def record_event(session: Session, event: ProviderEvent) -> EventOutcome:
    """Record a verified event once and apply it. Raises ``UnknownOrderError`` (nothing is
    recorded) or ``AmountMismatchError`` (recorded and the order flagged, not paid)."""
    inserted = _insert_once(session, event)
    if inserted is None:
        return EventOutcome(duplicate=True, note="duplicate")
    record = session.get(PaymentEvent, inserted)
    assert record is not None
    outcome = EventOutcome()
    _apply(session, record, event, outcome)
    return outcome


def apply_recorded_event(session: Session, payment_event_id: uuid.UUID) -> str:
    """Apply a recorded event (the task's part; the caller commits). Idempotent: the event
    row is locked and an event already processed (``processed_at``) or deferred (waiting for
    its subscription, replayed by ``_replay_deferred``) is left alone, so a redelivered or
    re-enqueued task never applies a payment twice. Returns what happened."""
    record = session.get(
        PaymentEvent, payment_event_id, with_for_update=True, populate_existing=True
    )
    if record is None:
        return "unknown event"
    if record.processed_at is not None or record.note is not None:
        return "already done"
    event = _deserialize(record.provider, record.event_id, record.payload)
    outcome = EventOutcome()
    try:
        _apply(session, record, event, outcome)
    except UnknownOrderError:  # the order vanished since intake: keep the record, stop
        _processed(record, "unknown order")
    except AmountMismatchError:
        pass  # the order is flagged and the event processed (``_on_paid``)
    return record.note or "applied"


def unapplied_events(session: Session, *, older_than: float, limit: int = 500) -> list[uuid.UUID]:
    """Recorded events whose task never finished (a lost message, a crash, a broker outage
    at intake): neither processed nor deferred, received more than ``older_than`` s ago."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return list(
        session.scalars(
            select(PaymentEvent.id)
            .where(
                PaymentEvent.processed_at.is_(None),
                PaymentEvent.note.is_(None),
                PaymentEvent.received_at < cutoff,
            )
            .order_by(PaymentEvent.received_at)
            .limit(limit)
        )
    )


def _amount_problem(order: Order, event: ProviderEvent) -> bool:
    """The check ``_on_paid`` makes, for an order not paid yet."""
    if order.status in ("paid", "refunded"):
        return False
    missing = event.amount is None or not event.currency
    return (missing and event.amount_required) or (
        not missing
        and (event.amount != order.amount or (event.currency or "").upper() != order.currency)
    )


def _apply(session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome) -> None:
    handler = {
        EventKind.PAID: _on_paid,
        EventKind.RENEWED: _on_renewed,
        EventKind.PAYMENT_FAILED: _on_payment_failed,
        EventKind.CANCEL_AT_PERIOD_END: _on_cancel_at_period_end,
        EventKind.CANCELED: _on_canceled,
        EventKind.REFUNDED: _on_refunded,
    }.get(event.kind)
    if handler is None:
        _processed(record, "ignored")
        return
    handler(session, record, event, out)


def _on_paid(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    order = _locked_order(session, event)
    if order is None or order.provider != event.provider:
        raise UnknownOrderError(f"No order matches {event.provider} event {event.event_id}")
    record.order_id = order.id
    if order.status in ("paid", "refunded"):
        _processed(record, f"order already {order.status}")
        out.note = record.note
        return
    missing = event.amount is None or not event.currency
    if _amount_problem(order, event):
        order.flag = (
            f"amount missing: the {event.provider} event does not say what was paid, "
            f"expected {order.amount} {order.currency}"
            if missing
            else f"amount mismatch: paid {event.amount} {event.currency}, "
            f"expected {order.amount} {order.currency}"
        )
        _processed(record, "flagged: amount missing" if missing else "flagged: amount mismatch")
        log.error("order %s: %s (event %s)", order.id, order.flag, event.event_id)
        raise AmountMismatchError("The paid amount does not match the order")
    # A payment for an order we had given up on is still money taken: fulfil it.
    order.status = "paid"
    order.paid_at = event.occurred_at or utcnow()
    order.flag = None
    if event.provider_order_id and not order.provider_order_id:
        order.provider_order_id = event.provider_order_id
    subscription, box = _fulfil(session, order, event)
    _processed(record)
    if box is not None:
        out.boxes_to_provision.append(box.id)
    log.info("order %s paid (%s); subscription %s", order.id, event.provider, subscription.id)
    if subscription.payment_subscription_id:
        _replay_deferred(session, event.provider, subscription.payment_subscription_id, out)


def _subscription_lock_key(user_id: uuid.UUID, plan_id: str) -> int:
    """A signed 64-bit advisory-lock key for (user, plan)."""
    digest = hashlib.blake2b(f"subscription:{user_id}:{plan_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _fulfil(
    session: Session, order: Order, event: ProviderEvent
) -> tuple[Subscription, VibeBox | None]:
    """Create the subscription and its box, or extend the user's active one for this plan."""
    now = utcnow()
    delta = cycle_delta(order.billing_cycle)
    # One live subscription per (user, plan), extended by every further order: two orders
    # paid at the same moment must not both see "none yet" and create two: a
    # transaction-scoped advisory lock per (user, plan) serializes them (a row lock cannot:
    # the row to lock may not exist yet).
    session.execute(
        select(func.pg_advisory_xact_lock(_subscription_lock_key(order.user_id, order.plan_id)))
    )
    current = session.scalar(
        select(Subscription)
        .where(
            Subscription.user_id == order.user_id,
            Subscription.plan_id == order.plan_id,
            Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
        )
        .order_by(Subscription.current_period_end.desc())
        .with_for_update()
    )
    if current is not None:
        current.current_period_end = max(current.current_period_end, now) + delta
        current.status = "active"
        if event.provider_subscription_id:
            current.payment_subscription_id = event.provider_subscription_id
            current.payment_provider = order.provider
        order.subscription_id = current.id
        live = session.scalar(
            select(VibeBox.id).where(
                VibeBox.subscription_id == current.id, VibeBox.status.in_(LIVE_BOX_STATUSES)
            )
        )
        box = None
        if live is None:  # the paid subscription has no working box: give it one
            box = provisioning.create_vibebox(
                session,
                user_id=order.user_id,
                plan_id=order.plan_id,
                subscription_id=current.id,
                order_id=order.id,
                region=order.region,
            )
        return current, box
    subscription = Subscription(
        id=uuid.uuid4(),
        user_id=order.user_id,
        plan_id=order.plan_id,
        status="active",
        billing_cycle=order.billing_cycle,
        payment_provider=order.provider,
        payment_customer_id=event.provider_customer_id,
        payment_subscription_id=event.provider_subscription_id,
        current_period_start=now,
        current_period_end=now + delta,
    )
    session.add(subscription)
    session.flush()
    order.subscription_id = subscription.id
    box = provisioning.create_vibebox(
        session,
        user_id=order.user_id,
        plan_id=order.plan_id,
        subscription_id=subscription.id,
        order_id=order.id,
        region=order.region,
    )
    return subscription, box


def _on_refunded(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    """A full refund takes back what the order bought: the period it paid for, and the box
    with it when nothing paid is left."""
    order = _locked_order(session, event)
    if order is None or order.provider != event.provider:
        raise UnknownOrderError(f"No order matches {event.provider} refund {event.event_id}")
    record.order_id = order.id
    if order.status == "refunded":
        _processed(record, "order already refunded")
        return
    if event.amount is not None and event.amount != order.amount:
        _processed(record, "partial refund: not applied")
        log.warning(
            "order %s: refund of %s of %s not applied", order.id, event.amount, order.amount
        )
        return
    was_paid = order.status == "paid"
    order.status = "refunded"
    _processed(record)
    log.warning("order %s refunded at %s", order.id, event.provider)
    if not was_paid or order.subscription_id is None:
        return  # never fulfilled: nothing to take back (and a late PAID will not fulfil it)
    sub = session.get(Subscription, order.subscription_id, with_for_update=True)
    if sub is None:
        return
    created_it = session.scalar(select(VibeBox.id).where(VibeBox.order_id == order.id)) is not None
    shortened = sub.current_period_end - cycle_delta(order.billing_cycle)
    if created_it or shortened <= utcnow():
        _cancel_now(sub)
        live = session.scalars(
            select(VibeBox.id).where(
                VibeBox.subscription_id == sub.id,
                VibeBox.status.not_in((BoxStatus.TERMINATING, BoxStatus.TERMINATED)),
            )
        ).all()
        out.boxes_to_teardown.extend(
            box_id
            for box_id in live
            if engine.start_teardown(session, box_id, reason="payment refunded", cancellable=False)
        )
    else:
        sub.current_period_end = shortened  # an extension refunded: back to the old end


def _replay_deferred(session: Session, provider: str, subject: str, out: EventOutcome) -> None:
    deferred = session.scalars(
        select(PaymentEvent)
        .where(
            PaymentEvent.provider == provider,
            PaymentEvent.subject == subject,
            PaymentEvent.processed_at.is_(None),
        )
        .order_by(PaymentEvent.received_at)
        .with_for_update()
    ).all()
    for record in deferred:
        event = _deserialize(provider, record.event_id, record.payload)
        log.info("applying deferred payment event %s", record.event_id)
        _apply(session, record, event, out)
