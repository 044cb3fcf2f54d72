"""The ``vibebox`` command: Flask's CLI plus database, user and (later) pool commands."""

from __future__ import annotations

import os

import click
from flask import Flask
from flask.cli import AppGroup, FlaskGroup

from app.cli_pool import pool_cli

db_cli = AppGroup("db", help="Database schema (Alembic).")
user_cli = AppGroup("user", help="User accounts.")
orders_cli = AppGroup("orders", help="Orders and payments.")


def _alembic_config():
    from app.config import normalize_database_url
    from app.services.health import alembic_config

    url = os.environ.get("DATABASE_URL")
    if not url:
        raise click.ClickException("DATABASE_URL is not set")
    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
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


def _create_app() -> Flask:
    from app import create_app

    return create_app()


cli = FlaskGroup(create_app=_create_app, add_version_option=False, help="VibeBox operations.")
# Registered on the group itself so they run without building the app (no Redis needed).
cli.add_command(db_cli)
cli.add_command(user_cli)
cli.add_command(orders_cli)
cli.add_command(pool_cli)


def main() -> None:
    cli.main(prog_name="vibebox")
