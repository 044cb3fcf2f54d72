"""``vibebox pool``: add, list, update, drain and remove pool servers (same rules as the admin
API). Bootstrapping a host and the fleet commands (exec, upgrade-happy) are in cli_pool_fleet.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask.cli import AppGroup

pool_cli = AppGroup("pool", help="The server pool: SSH hosts that run VibeBoxes.")


@contextmanager
def _domain_errors() -> Iterator[None]:
    """Domain errors become a one-line message and exit status 1 (the session rolls back)."""
    from app.db import db_session
    from app.errors import VibeBoxError

    try:
        yield
    except VibeBoxError as exc:
        db_session().rollback()
        details = ""
        if exc.errors:
            parts = (f"{k}: {' '.join(map(str, v))}" for k, v in exc.errors.items())
            details = "; " + "; ".join(parts)
        raise click.ClickException(f"{exc.message} [{exc.code}]{details}") from None


def _server_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a server id (UUID)") from None


def _read_secret(key_file: Path | None, password_env: str | None) -> dict[str, str]:
    if (key_file is None) == (password_env is None):
        raise click.UsageError("Give exactly one of --key-file and --password-env.")
    if key_file is not None:
        try:
            return {"privateKey": key_file.read_text()}
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read {key_file}: {exc}") from None
    assert password_env is not None
    password = os.environ.get(password_env)
    if not password:
        raise click.ClickException(f"{password_env} is not set or empty")
    return {"password": password}


# --- gateway options (pool add, pool bootstrap) --------------------------------------------


def _gateway_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--gateway-host", help="Reach the server through this SSH bastion."),
        click.option("--gateway-port", type=int, default=22, show_default=True),
        click.option("--gateway-user", help="Login on the bastion."),
        click.option(
            "--gateway-key-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Private key for the bastion.",
        ),
        click.option("--gateway-password-env", metavar="VAR", help="Bastion password variable."),
        click.option(
            "--gateway-host-key",
            metavar="SHA256:...",
            help="The bastion's host key (required with --gateway-host).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _gateway_spec(options: dict[str, Any]) -> Any:
    """A ``pool.GatewaySpec`` from the --gateway-* options (None without --gateway-host)."""
    from app.services import pool

    host = options.pop("gateway_host")
    port = options.pop("gateway_port")
    user = options.pop("gateway_user")
    key_file = options.pop("gateway_key_file")
    password_env = options.pop("gateway_password_env")
    host_key = options.pop("gateway_host_key")
    if host is None:
        if any(v is not None for v in (user, key_file, password_env, host_key)):
            raise click.UsageError("--gateway-* options need --gateway-host.")
        return None
    if not user or not host_key:
        raise click.UsageError("--gateway-host needs --gateway-user and --gateway-host-key.")
    secret = _read_secret(key_file, password_env)
    return pool.GatewaySpec(
        host=host,
        port=port,
        user=user,
        password=secret.get("password"),
        private_key=secret.get("privateKey"),
        host_key_fingerprint=host_key,
    )


@pool_cli.command("add")
@click.option("--host", required=True, help="Hostname or IP address.")
@click.option("--port", type=int, default=22, show_default=True)
@click.option("--user", required=True, help="SSH login user on the server.")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Unencrypted private key (PEM/OpenSSH) to log in with.",
)
@click.option("--password-env", metavar="VAR", help="Read the SSH password from this variable.")
@click.option("--cpu", "cpu_cores", type=int, help="CPU cores (default: read from the server).")
@click.option("--ram-gb", type=int, help="Memory in GB (default: read from the server).")
@click.option("--disk-gb", type=int, help="Disk in GB (default: read from the server).")
@click.option("--region")
@click.option("--label")
@click.option(
    "--host-key-fingerprint",
    metavar="SHA256:...",
    help="Expected host key (ssh-keygen -lf); refused if the server shows another.",
)
@click.option(
    "--skip-checks",
    is_flag=True,
    help="Skip the environment preflight (root/sudo, `happy` on the PATH, route to the Happy "
    "server). The host key is still pinned and the login still proven.",
)
@_gateway_options
def pool_add(
    host: str,
    port: int,
    user: str,
    key_file: Path | None,
    password_env: str | None,
    cpu_cores: int | None,
    ram_gb: int | None,
    disk_gb: int | None,
    region: str | None,
    label: str | None,
    host_key_fingerprint: str | None,
    skip_checks: bool,
    **gateway_options: Any,
) -> None:
    """Add a server: one SSH login proves the credentials and checks that boxes can work
    on it (root or sudo -n, `happy` on the login PATH, a route to the Happy server); the
    host key is pinned.

    With --gateway-host the server is reached through that SSH bastion (its host key must
    be given with --gateway-host-key)."""
    from marshmallow import ValidationError

    from app import get_settings
    from app.api.servers.schemas import ServerCreateSchema
    from app.db import db_session
    from app.services import pool

    raw: dict[str, Any] = {"host": host, "port": port, "user": user}
    raw.update(_read_secret(key_file, password_env))
    optional = {
        "cpuCores": cpu_cores,
        "ramGb": ram_gb,
        "diskGb": disk_gb,
        "region": region,
        "label": label,
        "hostKeyFingerprint": host_key_fingerprint,
    }
    raw.update({k: v for k, v in optional.items() if v is not None})
    try:
        # Same validation as the API; resources may be left out (read from the server).
        data = ServerCreateSchema(partial=("cpu_cores", "ram_gb", "disk_gb")).load(raw)
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc.messages}") from None
    data.pop("skip_checks", None)  # the flag below says it
    gateway = _gateway_spec(gateway_options)
    session = db_session()
    with _domain_errors():
        settings = get_settings()
        admission = pool.admit_server(
            session,
            pool.ServerSpec(**data, gateway=gateway),
            encryption_key=settings.encryption_key,
            allowed_networks=settings.limits.pool_allowed_networks,
            happy_server_url=settings.happy_server_url,
            skip_checks=skip_checks,
        )
        session.commit()
    server, checks = admission.server, admission.checks
    click.echo(f"added server {server.id} ({server.ssh_user}@{server.host}:{server.ssh_port})")
    click.echo(f"host key pinned: {server.host_key_fingerprint}")
    click.echo(
        f"resources: {server.cpu_cores} cpu, {server.ram_gb} GB ram, {server.disk_gb} GB disk; "
        f"login {server.last_latency_ms} ms"
    )
    if checks.skipped:
        click.echo("checks: SKIPPED (--skip-checks); boxes may fail on this server")
    else:
        click.echo(f"happy: {checks.happy_path} (happy-coder {checks.happy_version})")
        click.echo(
            f"Happy server: {checks.happy_server_url} "
            f"(from the {checks.happy_server_url_source}; {checks.happy_server_reach})"
        )
    for note in checks.notes:
        click.echo(f"note: {note}")


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    seconds = int((now - when).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _table(rows: list[list[str]], out: Callable[[str], None]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@pool_cli.command("list")
@click.option("--state", help="Only servers in this state.")
def pool_list(state: str | None) -> None:
    """Show the pool: state, health (failures / last check / latency) and allocated box."""
    from app.db import db_session
    from app.models.server import SERVER_STATES
    from app.services import pool

    if state is not None and state not in SERVER_STATES:
        raise click.BadParameter(f"one of {', '.join(SERVER_STATES)}", param_hint="--state")
    session = db_session()
    views = pool.view_servers(session, pool.list_servers(session, state))
    if not views:
        click.echo("no servers" + (f" in state {state}" if state else ""))
        return
    now = datetime.now(UTC)
    rows = [["ID", "HOST", "USER", "STATE", "HEALTH", "ALLOCATED BOX", "LABEL", "LAST ERROR"]]
    for view in views:
        s = view.server
        latency = f"{s.last_latency_ms} ms" if s.last_latency_ms is not None else "-"
        health = f"{s.consecutive_failures} fail, {_ago(s.last_checked_at, now)}, {latency}"
        rows.append(
            [
                str(s.id),
                f"{s.host}:{s.ssh_port}",
                s.ssh_user,
                s.state,
                health,
                str(view.allocated_box_id or "-"),
                s.label or "",
                _one_line(s.last_error),
            ]
        )
    _table(rows, click.echo)


def _one_line(text: str | None, width: int = 80) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


@pool_cli.command("update")
@click.argument("server_id")
@click.option("--cpu", "cpu_cores", type=int, help="CPU cores.")
@click.option("--ram-gb", type=int, help="Memory in GB.")
@click.option("--disk-gb", type=int, help="Disk in GB.")
@click.option("--label", help="Label ('' clears it).")
@click.option("--region", help="Region ('' clears it).")
@click.option(
    "--drain/--undrain",
    default=None,
    help="Stop allocating to it (a box on it keeps running) / allocate to it again.",
)
def pool_update(
    server_id: str,
    cpu_cores: int | None,
    ram_gb: int | None,
    disk_gb: int | None,
    label: str | None,
    region: str | None,
    drain: bool | None,
) -> None:
    """Change SERVER_ID's resources, label or region, or drain / undrain it."""
    from marshmallow import ValidationError

    from app.api.servers.schemas import ServerUpdateSchema
    from app.db import db_session
    from app.services import pool

    raw: dict[str, Any] = {
        key: value
        for key, value in (
            ("cpuCores", cpu_cores),
            ("ramGb", ram_gb),
            ("diskGb", disk_gb),
            ("label", label),
            ("region", region),
        )
        if value is not None
    }
    raw.update({k: None for k in ("label", "region") if raw.get(k) == ""})
    if drain is not None:
        raw["state"] = "draining" if drain else "available"
    try:
        changes = ServerUpdateSchema().load(raw)  # same validation as the API's PATCH
    except ValidationError as exc:
        raise click.ClickException(f"invalid input: {exc.messages}") from None
    if not changes:
        raise click.UsageError("Nothing to change: give at least one option.")
    session = db_session()
    with _domain_errors():
        server = pool.update_server(session, _server_id(server_id), **changes)
        session.commit()
    click.echo(
        f"server {server.id}: {server.state}, {server.cpu_cores} cpu, {server.ram_gb} GB ram, "
        f"{server.disk_gb} GB disk, label {server.label or '-'}, region {server.region or '-'}"
    )


@pool_cli.command("drain")
@click.argument("server_id")
def pool_drain(server_id: str) -> None:
    """Stop allocating SERVER_ID; a box already on it keeps running."""
    from app.db import db_session
    from app.services import pool

    session = db_session()
    with _domain_errors():
        server = pool.drain_server(session, _server_id(server_id))
        session.commit()
    click.echo(f"server {server.id} is {server.state}")


@pool_cli.command("remove")
@click.argument("server_id")
def pool_remove(server_id: str) -> None:
    """Remove SERVER_ID (refused while a box is on it; retired if boxes used it before)."""
    from app.db import db_session
    from app.services import pool

    session = db_session()
    with _domain_errors():
        outcome = pool.remove_server(session, _server_id(server_id))
        session.commit()
    click.echo(f"server {server_id} {outcome}")
