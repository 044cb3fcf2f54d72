from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk, in_values

SERVER_STATES = (
    "available",
    "allocated",
    "cleaning",
    "unhealthy",
    "draining",
    "retired",
    # Cloud servers (app/services/capacity/): creating -> bootstrapping -> available, and
    # retiring -> destroyed.
    "creating",
    "bootstrapping",
    "retiring",
    "destroyed",
)
CLOUD_STATES = ("creating", "bootstrapping", "retiring", "destroyed")
SERVER_AUTH_METHODS = ("key", "password")
# A gateway (bastion) is all there or not at all.
GATEWAY_COMPLETE = (
    "gateway_host IS NULL OR (gateway_port IS NOT NULL AND gateway_user IS NOT NULL"
    " AND gateway_auth_method IN ('key', 'password')"
    " AND gateway_credential_encrypted IS NOT NULL AND gateway_host_key_fingerprint IS NOT NULL)"
)


class Server(UUIDPk, Timestamps, Base):
    """A machine in the pool that can host one VibeBox at a time."""

    __tablename__ = "servers"
    __table_args__ = (
        CheckConstraint(in_values("state", SERVER_STATES), name="state"),
        CheckConstraint(in_values("auth_method", SERVER_AUTH_METHODS), name="auth_method"),
        CheckConstraint("ssh_port BETWEEN 1 AND 65535", name="ssh_port_range"),
        UniqueConstraint("host", "ssh_port", "ssh_user"),
        # Allocation picks the smallest fitting available server, oldest first: the index
        # carries the whole ORDER BY, so LIMIT 1 reads one row, not every equal-sized server.
        Index(
            "ix_servers_state_resources",
            "state",
            "cpu_cores",
            "ram_gb",
            "disk_gb",
            "created_at",
            "id",
        ),
        CheckConstraint(GATEWAY_COMPLETE, name="gateway_complete"),
    )

    host: Mapped[str] = mapped_column(String(255))
    ssh_port: Mapped[int] = mapped_column(Integer, default=22, server_default="22")
    ssh_user: Mapped[str] = mapped_column(String(64))
    auth_method: Mapped[str] = mapped_column(String(16))
    credential_encrypted: Mapped[bytes] = mapped_column(LargeBinary)  # password or private key
    host_key_fingerprint: Mapped[str] = mapped_column(String(128))  # "SHA256:..."
    cpu_cores: Mapped[int] = mapped_column(Integer)
    ram_gb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    region: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="available", server_default="available")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_latency_ms: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    cloud_provider: Mapped[str | None] = mapped_column(String(32))  # the libcloud driver name
    cloud_node_id: Mapped[str | None] = mapped_column(String(128))
    # Optional bastion the server is reached through (SSH direct-tcpip, like ProxyJump):
    # its own login, credential (encrypted, bound to this row) and pinned host key.
    gateway_host: Mapped[str | None] = mapped_column(String(255))
    gateway_port: Mapped[int | None] = mapped_column(Integer)
    gateway_user: Mapped[str | None] = mapped_column(String(64))
    gateway_auth_method: Mapped[str | None] = mapped_column(String(16))
    gateway_credential_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    gateway_host_key_fingerprint: Mapped[str | None] = mapped_column(String(128))
    # Servers we created at a cloud provider (None: added by an operator).
    cloud_provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("cloud_providers.id", ondelete="SET NULL"), index=True
    )
    cloud_size: Mapped[str | None] = mapped_column(String(64))
    price_monthly_cents: Mapped[int | None] = mapped_column(Integer)
    price_hourly: Mapped[Decimal | None] = mapped_column(Numeric(12, 5))  # dollars per hour
    # When the server last became free (idle retirement of cloud servers counts from here).
    idle_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
