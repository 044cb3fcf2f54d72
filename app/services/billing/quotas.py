"""Per-user box quotas checked at checkout, and the policy (regions, limits) checkout follows."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import RegionSettings
from app.errors import ConflictError
from app.models import Order, Plan, Subscription, VibeBox
from app.models.vibebox import VIBEBOX_STATUSES
from app.services.boxes.statuses import BoxStatus
from app.timeutil import utcnow

LIVE_SUBSCRIPTION_STATUSES = ("active", "past_due")


LIVE_BOX_STATUSES = tuple(
    s for s in VIBEBOX_STATUSES if s not in (BoxStatus.TERMINATED, BoxStatus.ERROR)
)


# What the per-user quota counts: every box not (being) torn down, failed ones included.
QUOTA_BOX_STATUSES = tuple(
    s for s in VIBEBOX_STATUSES if s not in (BoxStatus.TERMINATING, BoxStatus.TERMINATED)
)


@dataclass(frozen=True)
class CheckoutPolicy:
    """What checkout needs from the settings (regions, the quota); the defaults are the
    settings' defaults."""

    regions: RegionSettings = field(default_factory=RegionSettings)
    max_live_boxes_per_user: int = 3  # 0: no limit
    pending_order_seconds: float = 3600.0  # unpaid checkouts count this long

    @classmethod
    def from_settings(cls, settings: Any) -> CheckoutPolicy:
        return cls(
            regions=settings.regions,
            max_live_boxes_per_user=settings.max_live_boxes_per_user,
            pending_order_seconds=settings.quota_pending_order_seconds,
        )


def _quota_lock_key(user_id: uuid.UUID) -> int:
    digest = hashlib.blake2b(f"quota:{user_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def lock_user_quota(session: Session, user_id: uuid.UUID) -> None:
    """Serialize the quota checks of one user (until the transaction ends)."""
    session.execute(select(func.pg_advisory_xact_lock(_quota_lock_key(user_id))))


def renewal_box(session: Session, user_id: uuid.UUID, plan_id: str) -> VibeBox | None:
    """The working box of the user's live subscription of ``plan_id``, if any: a further
    order of that plan extends the subscription and adds no box (see ``_fulfil``)."""
    return session.scalar(
        select(VibeBox)
        .join(Subscription, VibeBox.subscription_id == Subscription.id)
        .where(
            Subscription.user_id == user_id,
            Subscription.plan_id == plan_id,
            Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
            VibeBox.status.in_(LIVE_BOX_STATUSES),
        )
        .order_by(VibeBox.created_at.desc())
        .limit(1)
    )


def quota_limit(plan: Plan, policy: CheckoutPolicy) -> int:
    """Live boxes a user may have when buying ``plan`` (0: no limit)."""
    if plan.max_live_boxes_per_user is not None:
        return plan.max_live_boxes_per_user
    return policy.max_live_boxes_per_user


def quota_usage(
    session: Session, user_id: uuid.UUID, *, plan_id: str, pending_order_seconds: float
) -> tuple[int, int]:
    """(live boxes, unpaid checkouts that would add a box) of the user, not counting a
    checkout of ``plan_id`` itself (a new one for that plan replaces it: paying both
    gives one box and a longer period). Unpaid checkouts count for
    ``pending_order_seconds`` after they were made."""
    live = session.scalar(
        select(func.count())
        .select_from(VibeBox)
        .where(VibeBox.user_id == user_id, VibeBox.status.in_(QUOTA_BOX_STATUSES))
    )
    since = utcnow() - relativedelta(seconds=int(pending_order_seconds))
    pending_plans = session.scalars(
        select(Order.plan_id)
        .where(
            Order.user_id == user_id,
            Order.status == "pending",
            Order.created_at >= since,
            Order.plan_id != plan_id,
        )
        .distinct()
    ).all()
    adding = [p for p in pending_plans if renewal_box(session, user_id, p) is None]
    return live or 0, len(adding)


def check_quota(session: Session, user_id: uuid.UUID, plan: Plan, policy: CheckoutPolicy) -> None:
    """409 ``quota_exceeded`` when one more box of ``plan`` would pass the user's limit."""
    limit = quota_limit(plan, policy)
    if limit == 0:
        return
    live, pending = quota_usage(
        session, user_id, plan_id=plan.id, pending_order_seconds=policy.pending_order_seconds
    )
    if live + pending + 1 <= limit:
        return
    have = f"{live} live box{'es' if live != 1 else ''}"
    if pending:
        have += f" and {pending} checkout{'s' if pending != 1 else ''} awaiting payment"
    raise ConflictError(
        f"You have {have}; the limit for the {plan.name} plan is {limit}. "
        "Terminate one (cancel its subscription) or contact support.",
        code="quota_exceeded",
        extra={"limit": limit, "liveBoxes": live, "pendingCheckouts": pending},
    )
