"""The stored form of a provider event, and the lookups and marks shared by intake and apply."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.integrations.payments.base import EventKind, ProviderEvent
from app.models import Order, PaymentEvent
from app.timeutil import utcnow

log = logging.getLogger(__name__)


@dataclass
class EventOutcome:
    duplicate: bool = False
    boxes_to_provision: list[uuid.UUID] = field(default_factory=list)
    boxes_to_teardown: list[uuid.UUID] = field(default_factory=list)
    note: str | None = None


def _serialize(event: ProviderEvent) -> dict[str, Any]:
    """The normalized event, stored so a deferred event can be applied later as it was."""
    return {
        "kind": event.kind.value,
        "type": event.type,
        "order_id": event.order_id,
        "provider_order_id": event.provider_order_id,
        "provider_subscription_id": event.provider_subscription_id,
        "provider_customer_id": event.provider_customer_id,
        "amount": event.amount,
        "currency": event.currency,
        "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
        "period_end": event.period_end.isoformat() if event.period_end else None,
        "amount_required": event.amount_required,
        "data": event.payload,
    }


def _insert_once(
    session: Session, event: ProviderEvent, order_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """Record ``event`` unless (provider, event_id) is already recorded: the new row's id, or
    None for a duplicate delivery (logged)."""
    inserted = session.scalar(
        insert(PaymentEvent)
        .values(
            id=uuid.uuid4(),
            order_id=order_id,
            provider=event.provider,
            event_id=event.event_id,
            type=event.type[:128],
            payload=_serialize(event),
            subject=event.provider_subscription_id,
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(PaymentEvent.id)
    )
    if inserted is None:
        log.info("payment event %s/%s is a duplicate: no-op", event.provider, event.event_id)
    return inserted


def _deserialize(provider: str, event_id: str, stored: dict[str, Any]) -> ProviderEvent:
    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return ProviderEvent(
        provider=provider,
        event_id=event_id,
        type=stored["type"],
        kind=EventKind(stored["kind"]),
        order_id=stored["order_id"],
        provider_order_id=stored["provider_order_id"],
        provider_subscription_id=stored["provider_subscription_id"],
        provider_customer_id=stored["provider_customer_id"],
        amount=stored["amount"],
        currency=stored["currency"],
        occurred_at=when(stored["occurred_at"]),
        period_end=when(stored["period_end"]),
        amount_required=stored.get("amount_required", True),
        payload=stored.get("data") or {},
    )


def _find_order(session: Session, event: ProviderEvent) -> Order | None:
    """The order an event names (no lock: intake only checks that it exists)."""
    if event.order_id:
        try:
            order = session.get(Order, uuid.UUID(event.order_id))
        except ValueError:
            order = None
        if order is not None:
            return order
    if event.provider_order_id:
        return session.scalar(
            select(Order).where(
                Order.provider == event.provider, Order.provider_order_id == event.provider_order_id
            )
        )
    return None


def _locked_order(session: Session, event: ProviderEvent) -> Order | None:
    order_id: uuid.UUID | None = None
    if event.order_id:
        try:
            order_id = uuid.UUID(event.order_id)
        except ValueError:
            order_id = None
    if order_id is not None:
        order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
        if order is not None:
            return order
    if event.provider_order_id:
        return session.scalar(
            select(Order)
            .where(
                Order.provider == event.provider, Order.provider_order_id == event.provider_order_id
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    return None


def _processed(record: PaymentEvent, note: str | None = None) -> None:
    record.processed_at = utcnow()
    record.note = note


def _defer(record: PaymentEvent, out: EventOutcome) -> None:
    """Keep the event for when its subscription becomes known (out-of-order delivery)."""
    record.processed_at = None
    record.note = "deferred: subscription not known yet"
    out.note = record.note
    log.info("payment event %s deferred until %s is known", record.event_id, record.subject)
