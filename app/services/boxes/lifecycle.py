"""Keeping the fleet honest without a human: subscription expiry and pool health.

Expiry: a subscription past its period end (+ grace for lapsed payments; none for
cancellations) becomes ``expired`` / ``canceled`` and its boxes start the teardown chain.
Health: each probe result is recorded on the server; a box whose server stops answering
is marked degraded so its owner sees it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import Exists, and_, exists, or_, select
from sqlalchemy.orm import Session

from app.models import Server, Subscription, VibeBox
from app.services import pool
from app.services.boxes import engine
from app.services.boxes.statuses import BoxStatus
from app.timeutil import utcnow

log = logging.getLogger(__name__)

ENDED = (BoxStatus.TERMINATING, BoxStatus.TERMINATED)
PROBED_STATES = ("available", "allocated", "unhealthy", "draining")
SERVER_DOWN = "The box's server does not answer health checks; we are looking into it."


def _live_box_exists() -> Exists:
    return exists().where(VibeBox.subscription_id == Subscription.id, VibeBox.status.not_in(ENDED))


def due_subscriptions(
    session: Session, *, grace_seconds: float, limit: int = 200
) -> list[uuid.UUID]:
    """Subscriptions to expire or cancel now, and ended ones whose boxes still live."""
    now = utcnow()
    lapsed = now - timedelta(seconds=grace_seconds)
    return list(
        session.scalars(
            select(Subscription.id)
            .where(
                or_(
                    and_(
                        Subscription.status.in_(("active", "past_due")),
                        Subscription.current_period_end < lapsed,
                    ),
                    and_(
                        Subscription.status == "active",
                        Subscription.cancel_at_period_end,
                        Subscription.current_period_end <= now,
                    ),
                    and_(
                        Subscription.status.in_(("expired", "canceled")),
                        Subscription.current_period_end <= now,
                        _live_box_exists(),
                    ),
                )
            )
            .order_by(Subscription.current_period_end)
            .limit(limit)
        )
    )


def expire_subscription(
    session: Session, subscription_id: uuid.UUID, *, grace_seconds: float
) -> list[uuid.UUID]:
    """Apply the end of a subscription and start its boxes' teardowns (enqueued when the
    caller commits); returns those boxes. Idempotent: a renewed subscription is left
    alone."""
    sub = session.get(Subscription, subscription_id, with_for_update=True, populate_existing=True)
    if sub is None:
        return []
    now = utcnow()
    if sub.status in ("active", "past_due"):
        if sub.cancel_at_period_end and sub.current_period_end <= now:
            sub.status = "canceled"
            sub.canceled_at = sub.canceled_at or now
        elif sub.current_period_end < now - timedelta(seconds=grace_seconds):
            sub.status = "expired"
        else:
            return []  # renewed meanwhile
        log.info("subscription %s is %s", sub.id, sub.status)
    if sub.current_period_end > now:
        return []
    boxes = session.scalars(
        select(VibeBox.id).where(VibeBox.subscription_id == sub.id, VibeBox.status.not_in(ENDED))
    ).all()
    return [
        box_id
        for box_id in boxes
        if engine.start_teardown(
            session, box_id, reason=f"subscription {sub.status}", cancellable=True
        )
    ]


def servers_to_probe(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(Server.id).where(Server.state.in_(PROBED_STATES))))


def record_server_probe_for_box(
    session: Session,
    server_id: uuid.UUID,
    *,
    ok: bool,
    latency_ms: int | None,
    error: str | None,
    unhealthy_after: int,
) -> Server:
    """Record a server's SSH probe (``pool.record_server_probe``) and, for the live box on it,
    mark it degraded while the server fails (and clear that on recovery). A server sent to
    ``cleaning`` needs the scrub task (the caller enqueues)."""
    server = pool.record_server_probe(
        session, server_id, ok, latency_ms, error, unhealthy_after=unhealthy_after
    )
    box = session.scalar(
        select(VibeBox).where(
            VibeBox.server_id == server_id, VibeBox.status != BoxStatus.TERMINATED
        )
    )
    if box is not None:
        if ok and box.degraded_reason == SERVER_DOWN:
            box.degraded_since = box.degraded_reason = None
            log.info("box %s: server answers again; no longer degraded", box.id)
        elif not ok and box.degraded_reason != SERVER_DOWN:
            box.degraded_since = box.degraded_since or utcnow()
            box.degraded_reason = SERVER_DOWN
            log.warning("box %s degraded: its server fails health probes", box.id)
    return server
