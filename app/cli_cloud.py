"""``vibebox cloud``: add, list, update and remove cloud providers (same rules as the admin
API). Credentials are read from environment variables, never from the command line."""

from __future__ import annotations

import os
from typing import Any

import click
from flask.cli import AppGroup

from app.cli_pool import _domain_errors, _table

cloud_cli = AppGroup("cloud", help="Cloud providers the capacity service creates servers at.")


def _pairs(values: tuple[str, ...], option: str, *, numeric: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=option)
        if numeric:
            try:
                out[key] = int(value)
            except ValueError:
                raise click.BadParameter(
                    f"{item!r}: the value is not a number", param_hint=option
                ) from None
        else:
            out[key] = value
    return out


def _rules(values: tuple[str, ...]) -> list[dict[str, Any]]:
    rules = []
    for item in values:
        parts = item.split(":")
        if len(parts) != 4:
            raise click.BadParameter(
                f"{item!r}: expected SIZE:CPU:RAM_GB:DISK_GB", param_hint="--size-rule"
            )
        try:
            rules.append(
                {
                    "size": parts[0],
                    "cpu": int(parts[1]),
                    "ramGb": int(parts[2]),
                    "diskGb": int(parts[3]),
                }
            )
        except ValueError:
            raise click.BadParameter(
                f"{item!r}: CPU, RAM and disk are numbers", param_hint="--size-rule"
            ) from None
    return rules


def _credentials(
    token_env: str | None, secret_env: str | None, extra: tuple[str, ...]
) -> dict[str, str] | None:
    if token_env is None:
        if secret_env is not None or extra:
            raise click.UsageError("--secret-env and --credential need --token-env.")
        return None
    token = os.environ.get(token_env)
    if not token:
        raise click.ClickException(f"{token_env} is not set or empty")
    creds = {"key": token}
    if secret_env is not None:
        secret = os.environ.get(secret_env)
        if not secret:
            raise click.ClickException(f"{secret_env} is not set or empty")
        creds["secret"] = secret
    creds.update(_pairs(extra, "--credential"))
    return creds


def _common(func: Any) -> Any:
    options = [
        click.option("--region", help="The cloud's region slug (nyc1, us-east-1, ...)."),
        click.option(
            "--box-region",
            help="The VibeBox region (one of REGIONS) its servers serve ('' clears it).",
        ),
        click.option("--image", help="Image slug or id (ubuntu-24-04-x64, ami-...)."),
        click.option("--size", "sizes", multiple=True, metavar="PLAN=SIZE", help="Size per plan."),
        click.option(
            "--size-rule",
            "size_rules",
            multiple=True,
            metavar="SIZE:CPU:RAM_GB:DISK_GB",
            help="Sizes for plans without --size: the smallest covering the plan.",
        ),
        click.option(
            "--price",
            "prices",
            multiple=True,
            metavar="SIZE=CENTS",
            help="Monthly price of a size.",
        ),
        click.option("--warm-size", help="Size of warm (idle, pre-created) servers."),
        click.option("--ssh-port", type=int),
        click.option("--login-user", help="Login user on created servers (root or a sudoer)."),
        click.option("--api-base-url", help="API base URL override (private clouds, tests)."),
        click.option("--warm-target", type=int, help="Idle servers to keep ready."),
        click.option("--max-servers", type=int, help="Hard maximum of servers."),
        click.option("--monthly-budget-cents", type=int, help="Budget cap per month (cents)."),
        click.option(
            "--idle-retire-seconds",
            type=int,
            help="Retire idle servers above the warm target after this.",
        ),
        click.option("--boot-seconds", type=int, help="Expected boot time shown to waiting boxes."),
        click.option(
            "--token-env", metavar="VAR", help="Read the API token (key) from this variable."
        ),
        click.option("--secret-env", metavar="VAR", help="Read the API secret from this variable."),
        click.option(
            "--credential",
            "extra_credentials",
            multiple=True,
            metavar="NAME=VALUE",
            help="Other credential fields (securityGroupId=...).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _raw(opts: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    names = {
        "region": "region",
        "box_region": "boxRegion",
        "image": "image",
        "warm_size": "warmSize",
        "ssh_port": "sshPort",
        "login_user": "loginUser",
        "api_base_url": "apiBaseUrl",
        "warm_target": "warmTarget",
        "max_servers": "maxServers",
        "monthly_budget_cents": "monthlyBudgetCents",
        "idle_retire_seconds": "idleRetireSeconds",
        "boot_seconds": "bootSeconds",
    }
    for name, key in names.items():
        if opts.get(name) is not None:
            raw[key] = opts[name]
    if raw.get("boxRegion") == "":
        raw["boxRegion"] = None  # '' clears it
    if opts.get("sizes"):
        raw["planSizes"] = _pairs(opts["sizes"], "--size")
    if opts.get("size_rules"):
        raw["sizeRules"] = _rules(opts["size_rules"])
    if opts.get("prices"):
        raw["sizePrices"] = _pairs(opts["prices"], "--price", numeric=True)
    creds = _credentials(
        opts.get("token_env"), opts.get("secret_env"), opts.get("extra_credentials") or ()
    )
    if creds is not None:
        raw["credentials"] = creds
    return raw


def _describe(view: Any) -> str:
    p = view.provider
    budget = (
        f"${p.monthly_budget_cents / 100:.2f}/month"
        if p.monthly_budget_cents is not None
        else "no budget cap"
    )
    return (
        f"cloud provider {p.name} ({p.id}): {p.driver} {p.region}, image {p.image}, "
        f"{'enabled' if p.enabled else 'disabled'}, warm {p.warm_target}, max {p.max_servers}, "
        f"{budget}, {view.servers} server(s)"
    )


@cloud_cli.command("add")
@click.option("--name", required=True, help="A name for this provider account + region.")
@click.option(
    "--driver",
    default="digitalocean",
    show_default=True,
    type=click.Choice(["digitalocean", "ec2", "vultr", "linode", "aliyun_ecs"]),
)
@_common
@click.option("--disabled", is_flag=True, help="Add it disabled.")
def cloud_add(name: str, driver: str, disabled: bool, **opts: Any) -> None:
    """Add a cloud provider (credentials from --token-env / --secret-env, sealed at rest)."""
    from marshmallow import ValidationError

    from app import get_settings
    from app.api.cloud_providers.schemas import CloudProviderCreateSchema
    from app.db import db_session
    from app.services.capacity import cloud_providers

    raw = {"name": name, "driver": driver, **_raw(opts)}
    if disabled:
        raw["enabled"] = False
    if "credentials" not in raw:
        raise click.UsageError("--token-env is required.")
    try:
        data = CloudProviderCreateSchema().load(raw)
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc.messages}") from None
    session = db_session()
    with _domain_errors():
        credentials = data.pop("credentials")
        provider = cloud_providers.add_provider(
            session, encryption_key=get_settings().encryption_key, credentials=credentials, **data
        )
        session.commit()
        click.echo("added " + _describe(cloud_providers.view(session, [provider])[0]))
    click.echo(f"ssh public key: {provider.ssh_public_key}")


@cloud_cli.command("list")
def cloud_list() -> None:
    """Show cloud providers (never their credentials)."""
    from app.db import db_session
    from app.services.capacity import cloud_providers

    views, _total = cloud_providers.page_providers(db_session(), limit=1000)
    if not views:
        click.echo("no cloud providers")
        return
    rows = [["NAME", "DRIVER", "REGION", "ENABLED", "WARM", "MAX", "BUDGET", "SERVERS", "API"]]
    for v in views:
        p = v.provider
        budget = (
            f"{p.monthly_budget_cents / 100:.2f}" if p.monthly_budget_cents is not None else "-"
        )
        rows.append(
            [
                p.name,
                p.driver,
                p.region,
                "yes" if p.enabled else "no",
                str(p.warm_target),
                str(p.max_servers),
                budget,
                str(v.servers),
                p.api_base_url or "-",
            ]
        )
    _table(rows, click.echo)


@cloud_cli.command("update")
@click.argument("provider")
@_common
@click.option("--enable/--disable", "enabled", default=None, help="Create servers there or not.")
def cloud_update(provider: str, enabled: bool | None, **opts: Any) -> None:
    """Change PROVIDER (name or id)."""
    from marshmallow import ValidationError

    from app import get_settings
    from app.api.cloud_providers.schemas import CloudProviderUpdateSchema
    from app.db import db_session
    from app.services.capacity import cloud_providers

    raw = _raw(opts)
    if enabled is not None:
        raw["enabled"] = enabled
    if not raw:
        raise click.UsageError("Nothing to change: give at least one option.")
    try:
        changes = CloudProviderUpdateSchema().load(raw)
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc.messages}") from None
    session = db_session()
    with _domain_errors():
        updated = cloud_providers.update_provider(
            session, provider, encryption_key=get_settings().encryption_key, **changes
        )
        session.commit()
        click.echo("updated " + _describe(cloud_providers.view(session, [updated])[0]))


@cloud_cli.command("remove")
@click.argument("provider")
def cloud_remove(provider: str) -> None:
    """Remove PROVIDER (refused while servers of it exist)."""
    from app.db import db_session
    from app.services.capacity import cloud_providers

    session = db_session()
    with _domain_errors():
        cloud_providers.remove_provider(session, provider)
        session.commit()
    click.echo(f"cloud provider {provider} removed")
