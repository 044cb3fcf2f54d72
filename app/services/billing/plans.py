"""The plan catalogue: active plans as shown to buyers, and operators' plan settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import RegionSettings
from app.errors import NotFoundError, ValidationError
from app.models import Plan
from app.services.billing.quotas import CheckoutPolicy, quota_limit
from app.services.pool import regions


def list_active_plans(session: Session) -> list[Plan]:
    return list(session.scalars(select(Plan).where(Plan.active).order_by(Plan.price_monthly)))


def describe_plans(session: Session, settings: Any) -> list[dict[str, Any]]:
    """The active plans as the catalogue shows them: the columns, plus the regions each is
    offered in, its default region and the box limit that applies to it."""
    policy = CheckoutPolicy.from_settings(settings)
    return [
        {
            **{column.key: getattr(plan, column.key) for column in Plan.__table__.columns},
            "offered_regions": regions.offered_regions(policy.regions, plan),
            "default_region": regions.default_region(policy.regions, plan),
            "max_live_boxes": quota_limit(plan, policy),
        }
        for plan in list_active_plans(session)
    ]


_UNSET: Any = object()


def configure_plan(
    session: Session,
    plan_id: str,
    region_settings: RegionSettings,
    *,
    regions: list[str] | None = _UNSET,
    default_region: str | None = _UNSET,
    max_live_boxes_per_user: int | None = _UNSET,
) -> Plan:
    """Set where a plan is sold and its box limit (operators: ``vibebox plans update``).
    None clears a setting (every region / DEFAULT_REGION / MAX_LIVE_BOXES_PER_USER); an
    argument left out is not changed. Region names must be in REGIONS when it is set."""
    from app.config import REGION_RE

    plan = session.get(Plan, plan_id, with_for_update=True)
    if plan is None:
        raise NotFoundError("No such plan", code="plan_not_found")
    problems: dict[str, list[str]] = {}
    known = region_settings.regions

    def check(field_name: str, names: list[str]) -> None:
        bad = [n for n in names if not REGION_RE.fullmatch(n) or (known and n not in known)]
        if bad:
            problems[field_name] = [
                f"not a region of REGIONS ({', '.join(known) or 'none set'}): {', '.join(bad)}"
            ]

    if regions is not _UNSET:
        if regions is not None:
            regions = list(dict.fromkeys(r.strip().lower() for r in regions if r.strip()))
            check("regions", regions)
        plan.regions = regions
    if default_region is not _UNSET:
        if default_region is not None:
            default_region = default_region.strip().lower()
            check("defaultRegion", [default_region])
        plan.default_region = default_region
    if (
        plan.default_region is not None
        and plan.regions is not None
        and plan.default_region not in plan.regions
    ):
        problems.setdefault("defaultRegion", []).append("not one of the plan's regions")
    if max_live_boxes_per_user is not _UNSET:
        if max_live_boxes_per_user is not None and max_live_boxes_per_user < 0:
            problems["maxLiveBoxesPerUser"] = ["must be 0 (no limit) or more"]
        plan.max_live_boxes_per_user = max_live_boxes_per_user
    if problems:
        raise ValidationError("The plan settings are not valid", errors=problems)
    session.flush()
    return plan
