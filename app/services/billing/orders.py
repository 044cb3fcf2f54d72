"""Reading orders: one order of a user, and the box it bought."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.models import Order, VibeBox


def get_order(session: Session, order_id: uuid.UUID, *, owner_id: uuid.UUID | None = None) -> Order:
    order = session.get(Order, order_id)
    if order is None or (owner_id is not None and order.user_id != owner_id):
        raise NotFoundError("No such order", code="order_not_found")
    return order


def box_of_order(session: Session, order_id: uuid.UUID) -> uuid.UUID | None:
    return session.scalar(select(VibeBox.id).where(VibeBox.order_id == order_id))


def describe_order(session: Session, order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "status": order.status,
        "planId": order.plan_id,
        "billingCycle": order.billing_cycle,
        "provider": order.provider,
        "amount": order.amount,
        "currency": order.currency,
        "region": order.region,
        "createdAt": order.created_at,
        "paidAt": order.paid_at,
        "subscriptionId": order.subscription_id,
        "vibeBoxId": box_of_order(session, order.id),
    }
