"""Payment reconciliation (queue ``maintenance``): the cure for "paid but pending forever".

The sweeper selects orders pending longer than ORDER_RECONCILE_AFTER_SECONDS and fans out
one ``check_order`` per order; each asks its provider (``query_order``) and fulfils a paid
one through the same code path as a webhook (``billing.reconcile_order``).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import OperationalError

from app.db import db_session
from app.errors import TransientError
from app.integrations.payments.registry import ProviderRegistry, build_registry
from app.services import billing
from workers import celery_app, get_settings
from workers.base import sweeper

log = logging.getLogger(__name__)

_registry: ProviderRegistry | None = None


def registry() -> ProviderRegistry:
    global _registry
    if _registry is None:
        _registry = build_registry(get_settings())
    return _registry


@celery_app.task(
    name="billing.apply_payment_event",
    autoretry_for=(TransientError, OperationalError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=8,
    ignore_result=True,
)
def apply_payment_event(payment_event_id: str) -> str:
    """Apply a payment event the webhook recorded (order paid, subscription, box enqueued;
    renewals, cancellations, refunds). Idempotent: see ``billing.apply_recorded_event``; a
    lost message is re-enqueued by ``maintenance.reconcile``."""
    get_settings()  # binds the session on this process's first task
    session = db_session()
    outcome = billing.apply_recorded_event(session, uuid.UUID(payment_event_id))
    session.commit()  # publishes the boxes it enqueued
    return outcome


@celery_app.task(name="maintenance.reconcile_orders", acks_late=False, ignore_result=True)
@sweeper("reconcile_orders")
def reconcile_orders() -> int:
    """Fan out a check for every order pending too long (runs alone)."""
    settings = get_settings()
    ids = billing.stale_pending_orders(
        db_session(), older_than=settings.order_reconcile_after_seconds
    )
    db_session.commit()
    for order_id in ids:
        check_order.delay(str(order_id))
    return len(ids)


@celery_app.task(
    name="maintenance.check_order",
    autoretry_for=(TransientError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=5,
    ignore_result=True,
)
def check_order(order_id: str) -> str:
    """Ask the provider about one pending order and apply what it says."""
    return billing.reconcile_order(db_session(), uuid.UUID(order_id), registry(), get_settings())
