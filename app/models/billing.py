"""Subscriptions, orders and the payment event log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, Timestamps, UUIDPk, in_values
from app.models.plan import BILLING_CYCLES

if TYPE_CHECKING:
    from app.models.vibebox import VibeBox

SUBSCRIPTION_STATUSES = ("active", "past_due", "canceled", "expired")
ORDER_STATUSES = ("pending", "paid", "failed", "canceled", "refunded")
PAYMENT_PROVIDERS = ("stripe", "wechat", "alipay", "dev", "admin")


class Subscription(UUIDPk, Timestamps, Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(in_values("status", SUBSCRIPTION_STATUSES), name="status"),
        CheckConstraint(in_values("billing_cycle", BILLING_CYCLES), name="billing_cycle"),
        CheckConstraint("current_period_end > current_period_start", name="period_order"),
        Index("ix_subscriptions_status_period_end", "status", "current_period_end"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    billing_cycle: Mapped[str] = mapped_column(String(16))
    payment_provider: Mapped[str] = mapped_column(String(16))
    payment_customer_id: Mapped[str | None] = mapped_column(String(255))
    payment_subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    current_period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Order(UUIDPk, Timestamps, Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(in_values("status", ORDER_STATUSES), name="status"),
        CheckConstraint(in_values("billing_cycle", BILLING_CYCLES), name="billing_cycle"),
        CheckConstraint(in_values("provider", PAYMENT_PROVIDERS), name="provider"),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        UniqueConstraint("provider", "provider_order_id"),
        # The reconciler scans pending orders by age.
        Index("ix_orders_status_created_at", "status", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    billing_cycle: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)  # minor units, from the plan, never the client
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    provider_order_id: Mapped[str | None] = mapped_column(String(255))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id"))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The region the box is bought in (NULL: regions are off, any server).
    region: Mapped[str | None] = mapped_column(String(32))
    # Why a paid order was not fulfilled (e.g. amount mismatch); for operators.
    flag: Mapped[str | None] = mapped_column(String(255))

    # The box this order bought (``VibeBox.order_id`` is unique), read-only: boxes are
    # created by applying the payment, never through the order. Loaded when read (one query).
    vibebox: Mapped[VibeBox | None] = relationship(
        "VibeBox", primaryjoin="VibeBox.order_id == Order.id", uselist=False, viewonly=True
    )


class PaymentEvent(UUIDPk, Base):
    """Every verified webhook delivery, once: the idempotency key and the audit log."""

    __tablename__ = "payment_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index("ix_payment_events_deferred", "provider", "subject", "processed_at"),
    )

    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    order_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("orders.id"), index=True)
    # The provider subscription an event is about: deferred events (a renewal that
    # arrived before its checkout) are found again by it.
    subject: Mapped[str | None] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(String(255))  # why ignored / deferred / flagged
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
