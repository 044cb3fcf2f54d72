"""``vibebox plans``: where each plan is sold and its per-user box limit (README "Regions",
"Quotas")."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli_pool import _domain_errors, _table

plans_cli = AppGroup("plans", help="Plans: regions they are sold in, box limit per user.")


@plans_cli.command("list")
def plans_list() -> None:
    """Every plan: active, offered regions, default region, box limit per user."""
    from app import get_settings
    from app.db import db_session
    from app.models import Plan
    from app.services import billing
    from app.services.pool import regions

    settings = get_settings()
    policy = billing.CheckoutPolicy.from_settings(settings)
    rows = [["PLAN", "ACTIVE", "REGIONS", "DEFAULT", "LIMIT", "SET ON THE PLAN"]]
    for plan in db_session().query(Plan).order_by(Plan.price_monthly):
        own = []
        if plan.regions is not None:
            own.append(f"regions={','.join(plan.regions) or '(none)'}")
        if plan.default_region is not None:
            own.append(f"default={plan.default_region}")
        if plan.max_live_boxes_per_user is not None:
            own.append(f"limit={plan.max_live_boxes_per_user}")
        limit = billing.quota_limit(plan, policy)
        rows.append(
            [
                plan.id,
                "yes" if plan.active else "no",
                ",".join(regions.offered_regions(policy.regions, plan)) or "-",
                regions.default_region(policy.regions, plan) or "-",
                str(limit) if limit else "none",
                " ".join(own) or "-",
            ]
        )
    _table(rows, click.echo)


@plans_cli.command("update")
@click.argument("plan_id")
@click.option("--regions", help="Comma-separated regions it is sold in; '' for every region.")
@click.option("--default-region", help="Region of a checkout without one; '' for DEFAULT_REGION.")
@click.option(
    "--max-live-boxes",
    help="Live boxes one user may have with it; 0 for no limit, '' for MAX_LIVE_BOXES_PER_USER.",
)
def plans_update(
    plan_id: str, regions: str | None, default_region: str | None, max_live_boxes: str | None
) -> None:
    """Change where PLAN_ID is sold and its box limit per user."""
    from app import get_settings
    from app.db import db_session
    from app.services import billing

    changes: dict[str, object] = {}
    if regions is not None:
        changes["regions"] = [r for r in regions.replace(" ", ",").split(",") if r] or None
    if default_region is not None:
        changes["default_region"] = default_region or None
    if max_live_boxes is not None:
        try:
            changes["max_live_boxes_per_user"] = int(max_live_boxes) if max_live_boxes else None
        except ValueError:
            raise click.BadParameter(
                "an integer, or '' to clear", param_hint="--max-live-boxes"
            ) from None
    if not changes:
        raise click.UsageError("nothing to change (see --help)")
    with _domain_errors():
        plan = billing.configure_plan(
            db_session(),
            plan_id,
            get_settings().regions,
            **changes,  # type: ignore[arg-type]
        )
        db_session.commit()
    click.echo(
        f"plan {plan.id}: regions {','.join(plan.regions) if plan.regions is not None else 'all'}, "
        f"default {plan.default_region or 'DEFAULT_REGION'}, limit "
        f"{plan.max_live_boxes_per_user if plan.max_live_boxes_per_user is not None else 'global'}"
    )
