from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Integer, String, Text, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps

BILLING_CYCLES = ("monthly", "yearly")


class Plan(Timestamps, Base):
    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("price_monthly >= 0 AND price_yearly >= 0", name="prices_non_negative"),
        CheckConstraint("cpu_cores > 0 AND ram_gb > 0 AND disk_gb > 0", name="resources_positive"),
        CheckConstraint(
            "max_live_boxes_per_user IS NULL OR max_live_boxes_per_user >= 0",
            name="max_live_boxes_non_negative",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "basic" | "pro" | ...
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    price_monthly: Mapped[int] = mapped_column(Integer)  # minor units (cents)
    price_yearly: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="USD", server_default="USD")
    # Prices for the China market (WeChat Pay, Alipay charge CNY), in fen.
    price_monthly_cny: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    price_yearly_cny: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cpu_cores: Mapped[int] = mapped_column(Integer)
    ram_gb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    claude_api_quota: Mapped[int] = mapped_column(Integer)  # dollars per month
    features: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Regions this plan is sold in (a subset of REGIONS); NULL: every configured region.
    regions: Mapped[list[str] | None] = mapped_column(JSONB)
    # Where a checkout without a region goes (if offered); NULL: DEFAULT_REGION.
    default_region: Mapped[str | None] = mapped_column(String(32))
    # Live boxes one user may have when buying this plan; NULL: MAX_LIVE_BOXES_PER_USER;
    # 0: no limit.
    max_live_boxes_per_user: Mapped[int | None] = mapped_column(Integer)

    def price_for(self, billing_cycle: str, currency: str | None = None) -> int:
        """Price in minor units for a cycle, in the plan's currency or in CNY."""
        yearly = billing_cycle == "yearly"
        if currency == "CNY":
            return self.price_yearly_cny if yearly else self.price_monthly_cny
        return self.price_yearly if yearly else self.price_monthly
