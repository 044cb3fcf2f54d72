"""Intake of a verified webhook event: recorded once, applied by a task sent after commit."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.errors import UnknownOrderError
from app.integrations.payments.base import EventKind, ProviderEvent
from app.services import jobs
from app.services.billing.apply import _amount_problem, record_event
from app.services.billing.event_records import EventOutcome, _find_order, _insert_once


def intake_event(session: Session, event: ProviderEvent) -> EventOutcome:
    """The webhook's part: record a verified event once and leave its effect to the task
    ``billing.apply_payment_event``, enqueued for when the caller commits (see
    ``apply_recorded_event``). Two statements for a payment (the order it names, the INSERT).

    Refused as today, before anything is recorded: an event that names no known order
    (``UnknownOrderError``). A payment whose amount does not match its order is settled here,
    synchronously (``record_event``: recorded, the order flagged, ``AmountMismatchError``), so
    the provider still hears "no". A duplicate delivery is a no-op.
    """
    order_id: uuid.UUID | None = None
    if event.kind in (EventKind.PAID, EventKind.REFUNDED):
        order = _find_order(session, event)
        if order is None or order.provider != event.provider:
            raise UnknownOrderError(f"No order matches {event.provider} event {event.event_id}")
        if event.kind is EventKind.PAID and _amount_problem(order, event):
            return record_event(session, event)
        order_id = order.id
    inserted = _insert_once(session, event, order_id)
    if inserted is None:
        return EventOutcome(duplicate=True, note="duplicate")
    jobs.enqueue_payment_event(session, inserted)
    return EventOutcome(note="recorded")
