"""VibeBoxes and the per-step timeline of their provisioning."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, Timestamps, UUIDPk, in_values

VIBEBOX_STATUSES = (
    "pending",
    "waiting_for_capacity",
    "provisioning",
    "running",
    "starting",
    "stopping",
    "restarting",
    "stopped",
    "error",
    "terminating",
    "terminated",
)
STEP_STATES = ("pending", "running", "succeeded", "failed", "skipped")


class VibeBox(UUIDPk, Timestamps, Base):
    __tablename__ = "vibeboxes"
    __table_args__ = (
        CheckConstraint(in_values("status", VIBEBOX_STATUSES), name="status"),
        # A server hosts at most one live box; terminated boxes keep the id for history.
        Index(
            "uq_vibeboxes_live_server_id",
            "server_id",
            unique=True,
            postgresql_where=text("server_id IS NOT NULL AND status <> 'terminated'"),
        ),
        # The reconciler looks for boxes whose step stopped moving.
        Index("ix_vibeboxes_status_updated_at", "status", "updated_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("subscriptions.id"), index=True
    )
    # One box per paid order: the database settles duplicate webhook deliveries.
    order_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("orders.id"), unique=True)
    server_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("servers.id"))
    # Where the box runs: only servers of this region; NULL (regions off): any server.
    # Its Happy account lives on that region's Happy server.
    region: Mapped[str | None] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(24), default="pending")
    step: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)  # safe to show the owner
    next_retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    happy_machine_id: Mapped[str | None] = mapped_column(String(64))
    # Where a teardown that is cancelled (renewal before it began) returns the box to, and
    # the status a control action started from.
    resume_status: Mapped[str | None] = mapped_column(String(24))
    # The owner's control action in progress, or the one that failed (admin retry resumes it).
    action: Mapped[str | None] = mapped_column(String(16))
    # An expiry teardown may be cancelled by a renewal; an admin terminate or a refund not.
    teardown_cancellable: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # Capacity waits so far (the exponent of their backoff) and servers tried.
    capacity_waits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    moves: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set while the box's server fails health probes or its daemon is down.
    degraded_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    degraded_reason: Mapped[str | None] = mapped_column(Text)  # safe to show the owner
    # The box's own unprivileged Unix user on its server (created by configure_server,
    # deleted by teardown); the uid is what teardown verifies by.
    unix_user: Mapped[str | None] = mapped_column(String(32))
    unix_uid: Mapped[int | None] = mapped_column(Integer)
    # sha256 of the pool login's authorized_keys when the box was configured: teardown
    # checks that the box's tenancy left the operator's channel unchanged.
    login_keys_digest: Mapped[str | None] = mapped_column(String(64))
    # Automatic restarts of a crashed daemon by the health sweep (bounded, with backoff).
    daemon_restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    daemon_restarted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    steps: Mapped[list[ProvisioningStep]] = relationship(
        back_populates="vibebox",
        order_by="ProvisioningStep.position",
        cascade="all, delete-orphan",
    )
    events: Mapped[list[BoxEvent]] = relationship(
        back_populates="vibebox",
        order_by="BoxEvent.created_at",
        cascade="all, delete-orphan",
        lazy="raise_on_sql",
    )

    @property
    def degraded(self) -> bool:
        """The box's server fails health probes or its daemon is down."""
        return self.degraded_since is not None


class ProvisioningStep(UUIDPk, Base):
    __tablename__ = "provisioning_steps"
    __table_args__ = (
        CheckConstraint(in_values("state", STEP_STATES), name="state"),
        UniqueConstraint("vibebox_id", "name"),
    )

    vibebox_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("vibeboxes.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()"), onupdate=text("now()")
    )

    vibebox: Mapped[VibeBox] = relationship(back_populates="steps")


class BoxEvent(UUIDPk, Base):
    """Something that happened to a running box outside its steps (the daemon crashed and
    was restarted, sessions were ended by a stop, ...): part of the timeline owners read."""

    __tablename__ = "box_events"
    __table_args__ = (Index("ix_box_events_vibebox_id_created_at", "vibebox_id", "created_at"),)

    vibebox_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vibeboxes.id", ondelete="CASCADE"))
    # clock_timestamp(), not now(): events of one transaction keep their order.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("clock_timestamp()")
    )
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)  # safe to show the owner

    vibebox: Mapped[VibeBox] = relationship(back_populates="events")
