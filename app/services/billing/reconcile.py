"""Reconciling pending orders with their provider (beat task, `vibebox orders reconcile`)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import AmountMismatchError, PermanentError, TransientError
from app.integrations.payments.base import OrderRef, OrderState
from app.models import Order
from app.services.billing.apply import record_event
from app.timeutil import utcnow

log = logging.getLogger(__name__)


def stale_pending_orders(
    session: Session, *, older_than: float, limit: int = 200
) -> list[uuid.UUID]:
    cutoff = utcnow() - relativedelta(seconds=int(older_than))
    return list(
        session.scalars(
            select(Order.id)
            .where(Order.status == "pending", Order.created_at < cutoff)
            .order_by(Order.created_at)
            .limit(limit)
        )
    )


def order_ref(order: Order) -> OrderRef:
    return OrderRef(
        order_id=str(order.id),
        provider_order_id=order.provider_order_id,
        amount=order.amount,
        currency=order.currency,
    )


def expire_order(session: Session, order_id: uuid.UUID) -> None:
    order = session.get(Order, order_id, with_for_update=True)
    if order is not None and order.status == "pending":
        order.status = "canceled"
        order.flag = "expired unpaid"


def mark_order_failed(session: Session, order_id: uuid.UUID) -> None:
    order = session.get(Order, order_id, with_for_update=True)
    if order is not None and order.status == "pending":
        order.status = "failed"


def reconcile_order(session: Session, order_id: uuid.UUID, registry: Any, settings: Any) -> str:
    """Ask the provider about one pending order and apply what it says, through the same
    path as a webhook (``record_event``); commits its own work (no transaction is open
    during the provider call). Returns what was found. Shared by the beat task and
    ``vibebox orders reconcile``."""
    order = session.get(Order, order_id)
    if order is None or order.status != "pending":
        return "not pending"
    provider = registry.get(order.provider)
    if provider is None:
        return "provider disabled"
    ref = order_ref(order)
    session.rollback()
    try:
        answer = provider.query_order(ref)
    except PermanentError as exc:
        log.error("order %s: query at %s refused: %s", order_id, provider.name, exc)
        return "query refused"
    if answer.state is OrderState.PAID and answer.event is not None:
        try:
            record_event(session, answer.event)
        except AmountMismatchError:
            session.commit()
            return "amount mismatch"
        session.commit()
        log.warning("order %s was paid but no webhook arrived: fulfilled", order_id)
        return "paid"
    age = (utcnow() - order.created_at).total_seconds()
    if answer.state is OrderState.FAILED:
        mark_order_failed(session, order_id)
        session.commit()
        return "failed"
    if age > settings.order_expiry_seconds:
        try:
            provider.cancel_order(ref)
        except (TransientError, PermanentError) as exc:
            log.warning("order %s: close at %s failed: %s", order_id, provider.name, exc)
        expire_order(session, order_id)
        session.commit()
        return "expired"
    return answer.state.value
