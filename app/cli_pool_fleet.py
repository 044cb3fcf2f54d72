"""``vibebox pool bootstrap``, ``pool exec`` and ``pool upgrade-happy``: preparing servers and
fleet operations over the pool (registered on the ``pool`` group by app/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from app.cli_pool import (
    _domain_errors,
    _gateway_options,
    _gateway_spec,
    _read_secret,
    _server_id,
    pool_cli,
)

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
