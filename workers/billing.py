"""Payment reconciliation (queue ``maintenance``): the cure for "paid but pending forever".

The sweeper selects orders pending longer than ORDER_RECONCILE_AFTER_SECONDS and fans out
one ``check_order`` per order; each asks its provider (``query_order``) and fulfils a paid
one through the same code path as a webhook (``billing.record_event``).
"""

from __future__ import annotations

import logging
import uuid

from app.db import db_session
from app.errors import AmountMismatchError, PermanentError, TransientError
from app.extensions import get_redis
from app.integrations.payments.base import OrderState
from app.integrations.payments.registry import ProviderRegistry, build_registry
from app.models import Order
from app.services import billing
from app.services.billing import utcnow
from workers import celery_app, get_settings

log = logging.getLogger(__name__)

_registry: ProviderRegistry | None = None


def registry() -> ProviderRegistry:
    global _registry
    if _registry is None:
        _registry = build_registry(get_settings())
    return _registry


@celery_app.task(name="maintenance.reconcile_orders", acks_late=False, ignore_result=True)
def reconcile_orders() -> int:
    """Fan out a check for every order pending too long (runs alone: Redis lock)."""
    settings = get_settings()
    lock = get_redis(settings.redis_url).lock(
        "vibebox:lock:reconcile_orders", timeout=300, blocking=False
    )
    if not lock.acquire():
        return 0
    try:
        ids = billing.stale_pending_orders(
            db_session(), older_than=settings.order_reconcile_after_seconds
        )
        db_session.commit()
        for order_id in ids:
            check_order.delay(str(order_id))
        return len(ids)
    finally:
        lock.release()


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
    from workers.provisioning import enqueue_provisioning

    result = reconcile_order(uuid.UUID(order_id))
    for box_id in result.boxes:
        enqueue_provisioning(box_id)
    return result.state


class _Result:
    def __init__(self, state: str, boxes: list[uuid.UUID] | None = None) -> None:
        self.state = state
        self.boxes = boxes or []


def reconcile_order(order_id: uuid.UUID) -> _Result:
    """Shared by the task and ``vibebox orders reconcile``; commits its own work."""
    settings = get_settings()
    session = db_session()
    order = session.get(Order, order_id)
    if order is None or order.status != "pending":
        return _Result("not pending")
    provider = registry().get(order.provider)
    if provider is None:
        return _Result("provider disabled")
    ref = billing.order_ref(order)
    session.rollback()  # no transaction open during the remote call
    try:
        answer = provider.query_order(ref)
    except PermanentError as exc:
        log.error("order %s: query at %s refused: %s", order_id, provider.name, exc)
        return _Result("query refused")
    if answer.state is OrderState.PAID and answer.event is not None:
        try:
            outcome = billing.record_event(session, answer.event)
        except AmountMismatchError:
            session.commit()
            return _Result("amount mismatch")
        session.commit()
        log.warning("order %s was paid but no webhook arrived: fulfilled", order_id)
        return _Result("paid", outcome.boxes_to_provision)
    age = (utcnow() - order.created_at).total_seconds()
    if answer.state is OrderState.FAILED:
        billing.mark_order_failed(session, order_id)
        session.commit()
        return _Result("failed")
    if age > settings.order_expiry_seconds:
        try:
            provider.cancel_order(ref)
        except (TransientError, PermanentError) as exc:
            log.warning("order %s: close at %s failed: %s", order_id, provider.name, exc)
        billing.expire_order(session, order_id)
        session.commit()
        return _Result("expired")
    return _Result(answer.state.value)
