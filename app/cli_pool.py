"""``vibebox pool``: add, list, drain and remove pool servers (same rules as the admin API);
bootstrap a host, run a command across the pool, roll out a new Happy CLI (Fabric)."""

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


# --- bootstrap -----------------------------------------------------------------------------


@pool_cli.command("bootstrap")
@click.option("--host", required=True, help="Hostname or IP address.")
@click.option("--port", type=int, default=22, show_default=True)
@click.option("--user", default="root", show_default=True, help="SSH login (root or sudo -n).")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Unencrypted private key (PEM/OpenSSH) to log in with.",
)
@click.option("--password-env", metavar="VAR", help="Read the SSH password from this variable.")
@click.option(
    "--happy-server-url", help="HAPPY_SERVER_URL for the server (default: this backend's)."
)
@click.option(
    "--accept-host-key",
    metavar="SHA256:...",
    help="The host key you expect (ssh-keygen -lf on the host); refused if it differs.",
)
@click.option(
    "--trust-on-first-use",
    is_flag=True,
    help="Pin whatever host key the server shows now (only on a network you trust).",
)
@click.option("--add", "add_to_pool", is_flag=True, help="Add the server to the pool after.")
@click.option("--cpu", "cpu_cores", type=int, help="With --add: CPU cores (default: read).")
@click.option("--ram-gb", type=int, help="With --add: memory in GB (default: read).")
@click.option("--disk-gb", type=int, help="With --add: disk in GB (default: read).")
@click.option("--region", help="With --add: region.")
@click.option("--label", help="With --add: label.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_gateway_options
def pool_bootstrap(
    host: str,
    port: int,
    user: str,
    key_file: Path | None,
    password_env: str | None,
    happy_server_url: str | None,
    accept_host_key: str | None,
    trust_on_first_use: bool,
    add_to_pool: bool,
    cpu_cores: int | None,
    ram_gb: int | None,
    disk_gb: int | None,
    region: str | None,
    label: str | None,
    as_json: bool,
    **gateway_options: Any,
) -> None:
    """Prepare a host to run boxes: Node.js, happy-coder, HAPPY_SERVER_URL, verification.

    Idempotent (a second run changes nothing). The host key is pinned on first contact only
    with --accept-host-key or --trust-on-first-use.
    """
    from app import get_settings
    from app.config import BootstrapSettings
    from app.errors import HostKeyMismatchError, IntegrationError
    from app.integrations import bootstrap
    from app.integrations.ssh import SSHTarget, fetch_host_key_fingerprint
    from app.services import pool

    if accept_host_key and trust_on_first_use:
        raise click.UsageError("Give --accept-host-key or --trust-on-first-use, not both.")
    secret = _read_secret(key_file, password_env)
    gateway = _gateway_spec(gateway_options)
    settings = get_settings()
    with _domain_errors():
        if accept_host_key:
            accept_host_key = pool.normalize_fingerprint(accept_host_key)
        gateway_target = gateway.target() if gateway is not None else None
        try:
            shown = fetch_host_key_fingerprint(host, port, gateway=gateway_target)
        except IntegrationError as exc:
            raise click.ClickException(f"cannot reach {host}:{port}: {exc}") from None
        if accept_host_key and shown != accept_host_key:
            raise click.ClickException(
                f"{host}:{port} presents host key {shown}, not {accept_host_key}: refused"
            )
        if not accept_host_key and not trust_on_first_use:
            raise click.ClickException(
                f"{host}:{port} presents host key {shown}. Check it on the host "
                "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run again with "
                f"--accept-host-key {shown} (or --trust-on-first-use)."
            )
        target = SSHTarget(
            host=host,
            port=port,
            user=user,
            password=secret.get("password"),
            private_key=secret.get("privateKey"),
            host_key_fingerprint=shown,
            gateway=gateway_target,
        )
        url = happy_server_url or settings.happy_server_url
        try:
            report = bootstrap.bootstrap_host(
                target, happy_server_url=url, settings=BootstrapSettings.from_env()
            )
        except HostKeyMismatchError as exc:
            raise click.ClickException(f"refused: {exc}") from None
        except IntegrationError as exc:
            raise click.ClickException(f"bootstrap of {target.where} failed: {exc}") from None
    if as_json:
        click.echo(bootstrap.report_json(report))
    else:
        click.echo(f"bootstrap {report.host} (host key {report.host_key_fingerprint})")
        for step in report.steps:
            click.echo(f"  {step.name:<12} {step.status:<8} {step.detail}")
        click.echo(
            f"  node {report.node_version}, npm {report.npm_version}, happy-coder "
            f"{report.happy_version} at {report.happy_path}, HAPPY_SERVER_URL "
            f"{report.happy_server_url}"
        )
        click.echo("changed" if report.changed else "nothing to do: already bootstrapped")
    if not add_to_pool:
        return
    session = db_session_()
    with _domain_errors():
        server = pool.add_server(
            session,
            pool.ServerSpec(
                host=host,
                port=port,
                user=user,
                password=secret.get("password"),
                private_key=secret.get("privateKey"),
                host_key_fingerprint=report.host_key_fingerprint,
                cpu_cores=cpu_cores,
                ram_gb=ram_gb,
                disk_gb=disk_gb,
                region=region,
                label=label,
                gateway=gateway,
            ),
            encryption_key=settings.encryption_key,
            allowed_networks=settings.limits.pool_allowed_networks,
        )
        session.commit()
    click.echo(f"added server {server.id} ({server.ssh_user}@{server.host}:{server.ssh_port})")


def db_session_() -> Any:
    from app.db import db_session

    return db_session()


# --- fleet ---------------------------------------------------------------------------------


def _first_lines(text: str, count: int = 5) -> list[str]:
    lines = [line for line in text.rstrip().splitlines()]
    shown = lines[:count]
    if len(lines) > count:
        shown.append(f"... ({len(lines) - count} more lines)")
    return shown


@pool_cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--server", "server_ids", multiple=True, help="Server id (repeatable).")
@click.option("--all", "all_servers", is_flag=True, help="Every server that is not retired.")
@click.option("--parallel", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True)
@click.option("--lines", type=click.IntRange(0, 1000), default=5, show_default=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def pool_exec(
    server_ids: tuple[str, ...],
    all_servers: bool,
    parallel: int,
    timeout: float,
    lines: int,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as the pool login on servers (vibebox pool exec --all -- uptime).

    At most --parallel hosts at a time, each with its own --timeout; prints each host's exit
    status and first output lines; exits 1 if any host failed or could not be reached.
    """
    import shlex

    from app import get_settings
    from app.services.pool import fleet

    if bool(server_ids) == all_servers:
        raise click.UsageError("Give --all or at least one --server ID (not both).")
    line = command[0] if len(command) == 1 else shlex.join(command)
    session = db_session_()
    with _domain_errors():
        servers = fleet.select_servers(
            session, [_server_id(s) for s in server_ids], all_servers=all_servers
        )
    if not servers:
        click.echo("no servers")
        return
    results = fleet.exec_on_servers(
        servers,
        line,
        encryption_key=get_settings().encryption_key,
        parallel=parallel,
        timeout=timeout,
    )
    by_id = {str(s.id): s for s in servers}
    failed = 0
    for result in results:
        server = by_id[result.name]
        where = f"{server.ssh_user}@{server.host}:{server.ssh_port}"
        if result.error is not None:
            status = f"ERROR {result.error}"
        else:
            status = f"exit {result.exit_status}"
        failed += not result.ok
        click.echo(f"{result.name} {where}: {status} ({result.seconds:.1f}s)")
        for text in _first_lines(result.output, lines) if lines else []:
            click.echo(f"    {text}")
    click.echo(f"{len(results) - failed} ok, {failed} failed")
    if failed:
        raise SystemExit(1)


@pool_cli.command("upgrade-happy")
@click.option("--version", help="happy-coder version (default: HAPPY_CODER_PACKAGE).")
@click.option("--include-busy", is_flag=True, help="Also servers that host a live box.")
@click.option("--parallel", type=click.IntRange(1, 50), default=1, show_default=True)
def pool_upgrade_happy(version: str | None, include_busy: bool, parallel: int) -> None:
    """Roll happy-coder out to the pool, --parallel servers at a time.

    Skips servers with a live box unless --include-busy; drains a free server during its
    install; re-verifies each server; stops at the first failure (quarantining that server)
    and exits 1.
    """
    from app import get_settings
    from app.config import BootstrapSettings
    from app.services.pool import fleet

    session = db_session_()

    def show(outcome: fleet.UpgradeOutcome) -> None:
        version_text = f" happy-coder {outcome.version}" if outcome.version else ""
        click.echo(
            f"{outcome.server_id} {outcome.host}: {outcome.status}{version_text}"
            + (f" ({outcome.detail})" if outcome.detail else "")
        )

    with _domain_errors():
        report = fleet.upgrade_happy(
            session,
            encryption_key=get_settings().encryption_key,
            settings=BootstrapSettings.from_env(),
            version=version,
            include_busy=include_busy,
            parallel=parallel,
            commit=session.commit,
            progress=show,
        )
    counts: dict[str, int] = {}
    for outcome in report.outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    click.echo(", ".join(f"{n} {status}" for status, n in counts.items()) or "no servers")
    if not report.ok:
        raise SystemExit(1)
