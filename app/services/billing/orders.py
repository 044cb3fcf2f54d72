"""Reading orders: one order of a user (the box it bought is ``Order.vibebox``)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.models import Order


def get_order(session: Session, order_id: uuid.UUID, *, owner_id: uuid.UUID | None = None) -> Order:
    order = session.get(Order, order_id)
    if order is None or (owner_id is not None and order.user_id != owner_id):
        raise NotFoundError("No such order", code="order_not_found")
    return order
