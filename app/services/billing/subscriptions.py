"""Subscriptions: renewal, failed payment and cancellation events, support cancellation, reads."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from dateutil.relativedelta import relativedelta
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import (
    InvalidStateError,
    NotFoundError,
    PaymentProviderError,
    PermanentError,
    TransientError,
)
from app.integrations.payments.base import PaymentProvider, ProviderEvent
from app.models import PaymentEvent, Subscription
from app.services.billing.event_records import EventOutcome, _defer, _locked_order, _processed
from app.timeutil import utcnow

log = logging.getLogger(__name__)


def cycle_delta(billing_cycle: str) -> relativedelta:
    return relativedelta(years=1) if billing_cycle == "yearly" else relativedelta(months=1)


def _subscription_for(session: Session, event: ProviderEvent) -> Subscription | None:
    if not event.provider_subscription_id:
        return None
    return session.scalar(
        select(Subscription)
        .where(
            Subscription.payment_provider == event.provider,
            Subscription.payment_subscription_id == event.provider_subscription_id,
        )
        .with_for_update()
    )


def _on_renewed(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    sub = _subscription_for(session, event)
    if sub is None:
        _defer(record, out)
        return
    new_end = event.period_end or max(sub.current_period_end, utcnow()) + cycle_delta(
        sub.billing_cycle
    )
    if new_end > sub.current_period_end:
        sub.current_period_end = new_end
    if sub.status in ("past_due", "expired"):
        sub.status = "active"
    _processed(record)
    log.info("subscription %s renewed until %s", sub.id, sub.current_period_end)


def _on_payment_failed(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    if event.order_id or (event.provider_order_id and not event.provider_subscription_id):
        order = _locked_order(session, event)
        if order is not None and order.status == "pending":
            order.status = "failed"
            record.order_id = order.id
            _processed(record)
            return
    sub = _subscription_for(session, event)
    if sub is None:
        if event.provider_subscription_id:
            _defer(record, out)
        else:
            _processed(record, "no matching order or subscription")
        return
    if sub.status == "active":
        sub.status = "past_due"
    _processed(record)


def _on_subscription(
    act: Callable[[Subscription], None],
) -> Callable[[Session, PaymentEvent, ProviderEvent, EventOutcome], None]:
    """A handler that applies ``act`` to the event's subscription, or defers the event
    until the subscription is known (its checkout's event may come later)."""

    def handle(
        session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
    ) -> None:
        sub = _subscription_for(session, event)
        if sub is None:
            _defer(record, out)
            return
        act(sub)
        _processed(record)

    return handle


def _mark_cancel_at_period_end(sub: Subscription) -> None:
    sub.cancel_at_period_end = True


def _cancel_now(sub: Subscription) -> None:
    now = utcnow()
    sub.status = "canceled"
    sub.canceled_at = now
    if sub.current_period_end > now:
        sub.current_period_end = now
        # The period must stay non-empty (a CHECK constraint) even for a same-second cancel.
        sub.current_period_start = min(sub.current_period_start, now - relativedelta(seconds=1))


_on_cancel_at_period_end = _on_subscription(_mark_cancel_at_period_end)
_on_canceled = _on_subscription(_cancel_now)


def cancel_subscription(
    session: Session,
    subscription_id: uuid.UUID,
    *,
    at_period_end: bool,
    provider: PaymentProvider | None,
) -> Subscription:
    """Support cancellation (operators cancel on a customer's request, e.g. by email); also at
    the provider when it bills repeatedly (Stripe)."""
    sub = session.get(Subscription, subscription_id, with_for_update=True)
    if sub is None:
        raise NotFoundError("No such subscription", code="subscription_not_found")
    if sub.status in ("canceled", "expired"):
        raise InvalidStateError(
            f"The subscription is already {sub.status}",
            code="subscription_not_active",
            extra={"status": sub.status},
        )
    if provider is not None and sub.payment_subscription_id:
        try:
            provider.cancel_subscription(sub.payment_subscription_id, at_period_end=at_period_end)
        except (TransientError, PermanentError) as exc:
            log.error("cancel of %s at %s failed: %s", sub.id, sub.payment_provider, exc)
            raise PaymentProviderError(
                "The payment provider could not cancel the subscription"
            ) from None
    if at_period_end:
        sub.cancel_at_period_end = True
    else:
        _cancel_now(sub)
    log.info("subscription %s canceled (%s)", sub.id, "at period end" if at_period_end else "now")
    return sub


def get_subscription(session: Session, subscription_id: uuid.UUID) -> Subscription:
    sub = session.get(Subscription, subscription_id)
    if sub is None:
        raise NotFoundError("No such subscription", code="subscription_not_found")
    return sub


def list_subscriptions(session: Session, user_id: uuid.UUID) -> list[Subscription]:
    return list(
        session.scalars(
            select(Subscription)
            .where(Subscription.user_id == user_id)
            .order_by(Subscription.created_at.desc())
        )
    )
