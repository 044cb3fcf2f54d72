"""Regions: where a plan is sold and where a box runs (README "Regions").

``REGIONS`` unset: regions are off. Orders and boxes carry no region (NULL) and a box may
take any pool server: the behaviour before regions existed. ``REGIONS`` set: every new
order and box carries one of them; a box takes only servers of its region, and its Happy
account lives on its region's Happy server (``HAPPY_SERVER_URLS``, else
``HAPPY_SERVER_URL``).

A plan offers ``plans.regions`` (NULL: every configured region; names not in REGIONS are
ignored) and defaults to ``plans.default_region`` when offered, else ``DEFAULT_REGION`` when
offered, else its first offered region.
"""

from __future__ import annotations

from app.config import RegionSettings
from app.errors import ValidationError
from app.models import Plan

REGION_UNAVAILABLE = "region_unavailable"


def offered_regions(settings: RegionSettings, plan: Plan) -> list[str]:
    """The regions ``plan`` can be bought in, in REGIONS order ([] when regions are off)."""
    configured = settings.regions
    if plan.regions is None:
        return list(configured)
    return [r for r in configured if r in plan.regions]


def default_region(settings: RegionSettings, plan: Plan) -> str | None:
    """Where a checkout of ``plan`` without a region goes (None: regions off or none offered)."""
    offered = offered_regions(settings, plan)
    for candidate in (plan.default_region, settings.default_region):
        if candidate is not None and candidate in offered:
            return candidate
    return offered[0] if offered else None


def resolve_region(settings: RegionSettings, plan: Plan, requested: str | None) -> str | None:
    """The region a new box of ``plan`` gets: ``requested`` if offered, else the default.

    422 ``region_unavailable`` (with ``offeredRegions``) for a region the plan is not sold
    in, for any region while regions are off, and for a plan sold in no configured region.
    """
    offered = offered_regions(settings, plan)
    if requested is not None:
        requested = requested.strip().lower()
        if requested in offered:
            return requested
        if not settings.enabled:
            message = "Regions are not in use here; leave out region."
        else:
            message = (
                f"Region {requested!r} is not offered for the {plan.name} plan; "
                f"offered: {', '.join(offered) or 'none'}."
            )
        raise ValidationError(
            message,
            code=REGION_UNAVAILABLE,
            errors={"region": [message]},
            extra={"offeredRegions": offered},
        )
    if not settings.enabled:
        return None
    region = default_region(settings, plan)
    if region is None:
        message = f"The {plan.name} plan is not offered in any region at the moment."
        raise ValidationError(
            message,
            code=REGION_UNAVAILABLE,
            errors={"region": [message]},
            extra={"offeredRegions": []},
        )
    return region
