"""Cloud providers an operator configured: where the capacity service creates servers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Integer, LargeBinary, String, Text, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk, in_values

CLOUD_DRIVERS = ("digitalocean", "ec2", "vultr", "linode", "aliyun_ecs")


class CloudProvider(UUIDPk, Timestamps, Base):
    """One account + region at a cloud (a libcloud compute driver).

    Sizes: ``plan_sizes`` maps a plan id to a size slug; otherwise ``size_rules`` (a list of
    ``{"size", "cpu", "ramGb", "diskGb"}``) gives the smallest size whose resources cover the
    plan's. ``size_prices`` (size -> monthly price in cents) counts against
    ``monthly_budget_cents``. Credentials and our SSH private key are sealed with
    ``ENCRYPTION_KEY`` (AAD names the provider id and the field).
    """

    __tablename__ = "cloud_providers"
    __table_args__ = (
        CheckConstraint(in_values("driver", CLOUD_DRIVERS), name="driver"),
        CheckConstraint("ssh_port BETWEEN 1 AND 65535", name="ssh_port_range"),
        CheckConstraint("warm_target >= 0 AND max_servers >= 0", name="counts_non_negative"),
    )

    name: Mapped[str] = mapped_column(String(64), unique=True)
    driver: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(64))  # the cloud's own region slug (nyc3)
    # The VibeBox region (REGIONS) this provider's servers serve; None: boxes of any region
    # when regions are off. Servers it creates carry it as their `region`.
    box_region: Mapped[str | None] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(128))
    plan_sizes: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    size_rules: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    size_prices: Mapped[dict[str, int]] = mapped_column(JSONB, default=dict)
    warm_size: Mapped[str | None] = mapped_column(String(64))
    ssh_port: Mapped[int] = mapped_column(Integer, default=22, server_default="22")
    login_user: Mapped[str] = mapped_column(String(64), default="root", server_default="root")
    api_base_url: Mapped[str | None] = mapped_column(String(255))
    warm_target: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_servers: Mapped[int] = mapped_column(Integer, default=10, server_default="10")
    monthly_budget_cents: Mapped[int | None] = mapped_column(Integer)
    idle_retire_seconds: Mapped[int] = mapped_column(Integer, default=3600, server_default="3600")
    boot_seconds: Mapped[int] = mapped_column(Integer, default=60, server_default="60")
    credentials_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    ssh_private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    ssh_public_key: Mapped[str] = mapped_column(Text)
    ssh_key_id: Mapped[str | None] = mapped_column(String(128))  # the provider's key id
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
