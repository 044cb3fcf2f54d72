"""The ``vibebox`` command: database, user, order, pool and box commands for operators.

A plain click group (not Flask's: no ``run``/``shell``/``routes``); commands that need the
app get it through ``with_appcontext`` from the ``ScriptInfo`` that :func:`main` passes in.
Without ``DATABASE_URL`` / ``REDIS_URL`` in the environment it uses the embedded servers
``make run`` started under ./var/ (``scripts/services.py``). Errors are one line (no
traceback); logs are WARNING and up unless ``-v``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup, ScriptInfo

from app import cli_pool_fleet  # noqa: F401  - registers pool bootstrap / exec / upgrade-happy
from app.cli_boxes import boxes_cli
from app.cli_cloud import cloud_cli
from app.cli_plans import plans_cli
from app.cli_pool import pool_cli

NO_DATABASE = (
    "no database: DATABASE_URL is not set and no embedded PostgreSQL runs under ./var/; "
    "start the stack with `make run`, or set DATABASE_URL"
)

db_cli = AppGroup("db", help="Database schema (Alembic).")
user_cli = AppGroup("user", help="User accounts.")
orders_cli = AppGroup("orders", help="Orders and payments.")


def _alembic_config():
    from app.config import database_url
    from app.services.readiness import alembic_config

    use_embedded_services(redis=False)
    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", database_url().replace("%", "%%"))
    return cfg


@db_cli.command("upgrade", with_appcontext=False)
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations (schema and seeded plans) up to REVISION (default: head)."""
    from alembic import command

    command.upgrade(_alembic_config(), revision)


@db_cli.command("downgrade", with_appcontext=False)
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    from alembic import command

    command.downgrade(_alembic_config(), revision)


@db_cli.command("current", with_appcontext=False)
def db_current() -> None:
    """Show the database's revision."""
    from alembic import command

    command.current(_alembic_config())


@user_cli.command("create-admin")
@click.option("--email", required=True)
@click.option("--username", required=True)
@click.option(
    "--password-env",
    metavar="VAR",
    help="Read the password from this environment variable (else prompt).",
)
def create_admin(email: str, username: str, password_env: str | None) -> None:
    """Create an administrator account (or promote an existing user with that username)."""
    from marshmallow import ValidationError

    from app import get_settings
    from app.api.auth.schemas import RegisterRequestSchema
    from app.db import db_session
    from app.errors import ConflictError
    from app.services import accounts

    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise click.ClickException(f"{password_env} is empty")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        data = RegisterRequestSchema().load(
            {"email": email, "username": username, "password": password}
        )
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc.messages}") from None
    session = db_session()
    try:
        user = accounts.register_user(
            session,
            email=data["email"],
            username=data["username"],
            password=data["password"],
            is_admin=True,
            bcrypt_rounds=get_settings().bcrypt_rounds,
        )
        action = "created"
    except ConflictError:
        session.rollback()
        user = accounts.set_admin(session, login=data["username"], is_admin=True)
        action = "promoted"
    session.commit()
    click.echo(f"admin {user.username} ({user.email}) {action}")


@orders_cli.command("reconcile")
@click.option(
    "--older-than",
    type=float,
    default=None,
    help="Check orders pending longer than this many seconds "
    "(default ORDER_RECONCILE_AFTER_SECONDS).",
)
def reconcile_orders(older_than: float | None) -> None:
    """Ask the providers about pending orders now; fulfil the paid ones."""
    from app import get_settings
    from app.db import db_session
    from app.integrations.payments.registry import build_registry
    from app.services import billing

    settings = get_settings()
    threshold = settings.order_reconcile_after_seconds if older_than is None else older_than
    ids = billing.stale_pending_orders(db_session(), older_than=threshold)
    db_session.commit()
    registry = build_registry(settings)
    for order_id in ids:
        state = billing.reconcile_order(db_session(), order_id, registry, settings)
        click.echo(f"{order_id}: {state}")
    click.echo(f"{len(ids)} pending order(s) checked")


def register_cli(app: Flask) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(user_cli)
    app.cli.add_command(orders_cli)
    app.cli.add_command(pool_cli)
    app.cli.add_command(cloud_cli)
    app.cli.add_command(boxes_cli)
    app.cli.add_command(plans_cli)


def embedded_service_urls(var_dir: str | None = None) -> dict[str, str]:
    """URLs of the embedded PostgreSQL/Redis running under ./var/ (``make run``'s, through
    ``scripts/services.py``; empty outside a source checkout or when none runs)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "services.py"
    if not script.is_file():
        return {}
    spec = importlib.util.spec_from_file_location("vibebox_services", script)
    if spec is None or spec.loader is None:
        return {}
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    urls: dict[str, str] = module.running_urls("run", var_dir=var_dir)
    return urls


def use_embedded_services(environ: Any = os.environ, *, redis: bool = True) -> None:
    """Fill in DATABASE_URL / REDIS_URL from the running embedded servers where unset (the
    Celery broker, read from REDIS_URL when the workers module is first imported, too)."""
    missing = [n for n in ("DATABASE_URL", "REDIS_URL") if not (environ.get(n) or "").strip()]
    if not missing:
        return
    found = embedded_service_urls(environ.get("VIBEBOX_VAR_DIR") or None)
    for name in missing:
        if name in found:
            environ[name] = found[name]
    if not (environ.get("DATABASE_URL") or "").strip():
        raise click.ClickException(NO_DATABASE)
    if redis and not (environ.get("REDIS_URL") or "").strip():
        raise click.ClickException(
            "no Redis: REDIS_URL is not set and no embedded Redis runs under ./var/; "
            "start the stack with `make run`, or set REDIS_URL"
        )


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger().setLevel(level)
    for name in ("app", "workers", "celery", "kombu", "alembic"):
        logging.getLogger(name).setLevel(level)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class VibeBoxGroup(click.Group):
    """Maps what a command lets escape to one line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import OperationalError

        from app.config import ConfigError
        from app.errors import VibeBoxError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except VibeBoxError as exc:
            raise click.ClickException(f"{exc.message} [{exc.code}]") from None
        except OperationalError as exc:
            raise click.ClickException(
                f"cannot reach the database: {_one_line(exc.orig or exc)} "
                "(is `make run` running, or DATABASE_URL right?)"
            ) from None
        except ConfigError as exc:
            raise click.ClickException(_one_line(exc)) from None


@click.group(cls=VibeBoxGroup, help="VibeBox operations.")
@click.option("-v", "--verbose", is_flag=True, help="Log INFO messages too (default: WARNING).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    ctx.meta["vibebox.verbose"] = verbose
    _quiet_logs(verbose)


cli.add_command(db_cli)
cli.add_command(user_cli)
cli.add_command(orders_cli)
cli.add_command(pool_cli)
cli.add_command(cloud_cli)
cli.add_command(boxes_cli)
cli.add_command(plans_cli)


def _create_app() -> Flask:
    from app import create_app

    use_embedded_services()
    app = create_app()
    ctx = click.get_current_context(silent=True)
    _quiet_logs(bool(ctx and ctx.meta.get("vibebox.verbose")))  # create_app sets LOG_LEVEL
    return app


def main() -> None:
    cli.main(prog_name="vibebox", obj=ScriptInfo(create_app=_create_app))
