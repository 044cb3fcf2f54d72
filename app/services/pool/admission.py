"""Admitting an SSH host to the pool: one real login, host key pinned, environment preflight.

Admission (:func:`admit_server`) pins the host key and proves the credentials with one real
login before anything is stored, and in that login runs the environment preflight (root or
``sudo -n``, ``happy`` on the login PATH and its version, HAPPY_SERVER_URL and a route from
the server to it), refusing a server boxes could not work on (``skip_checks`` skips the
preflight only). The credential is sealed with AES-256-GCM and bound to its row (the AAD
names the server id), so a sealed value copied onto another row does not open.

HTTP mapping of the errors raised here: ``validation_error`` / ``server_unreachable`` /
``ssh_auth_failed`` / ``server_check_failed`` -> 422 (the request describes no usable
server), ``host_key_mismatch`` / ``server_exists`` -> 409.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Iterable
from dataclasses import replace

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.crypto import encrypt_str
from app.errors import (
    ConflictError,
    HostKeyMismatchError,
    HostUnreachableError,
    IntegrationError,
    SSHAuthError,
    TransientError,
    ValidationError,
)
from app.integrations import ssh
from app.integrations.box_host import BoxEnvironmentError, BoxHost
from app.integrations.ssh import SSHTarget
from app.models import Server
from app.services.pool.allocation import wake_waiting_boxes
from app.services.pool.credentials import _credential_aad, _gateway_credential_aad
from app.services.pool.networks import IPNetwork, Resolver, check_host_allowed
from app.services.pool.queries import _find, _now, get_server
from app.services.pool.specs import (
    SKIPPED_CHECKS,
    Admission,
    ConnectCheck,
    ConnectionReport,
    EnvironmentChecks,
    Resources,
    ServerSpec,
    ServerUnreachableError,
    SSHLoginFailedError,
    _validate_spec,
    normalize_fingerprint,
)

log = logging.getLogger(__name__)


UNIQUE_CONSTRAINT = "uq_servers_host_ssh_port_ssh_user"


def check_connection(
    target: SSHTarget,
    *,
    detect_resources: bool = False,
    timeout: float = 10.0,
    check_environment: bool = True,
    happy_server_url: str = "",
) -> ConnectionReport:
    """The real admission check: read the host key, compare it with the expected one (if
    any), log in with the key pinned, and (unless ``check_environment`` is off) run the
    environment preflight: root or passwordless ``sudo -n`` (it creates one Unix user per
    box), ``happy`` on the login PATH (its version read from the happy-coder package.json),
    HAPPY_SERVER_URL in the login environment (else ``happy_server_url``, the backend's,
    which box users then get) and a route from the server to that URL. Every problem found
    is named with its fix in one BoxEnvironmentError."""
    actual = ssh.fetch_host_key_fingerprint(
        target.host, target.port, timeout=timeout, gateway=target.gateway
    )
    expected = target.host_key_fingerprint
    if expected is not None and actual != expected:
        raise HostKeyMismatchError(
            f"{target.host}:{target.port} presented host key {actual}, expected {expected}",
            safe_message="The server's host key does not match.",
        )
    pinned = replace(target, host_key_fingerprint=actual)
    checks = SKIPPED_CHECKS
    with ssh.BoxSession(pinned, connect_timeout=timeout, command_timeout=timeout) as box:
        latency = box.probe()
        if check_environment:
            host = BoxHost(box, default_happy_server_url=happy_server_url)
            report = host.check_environment()
            problems = report.problems()
            if problems:
                found = "; ".join(problems)
                raise BoxEnvironmentError(
                    f"{target.user}@{target.host}: {found}",
                    safe_message=f"The login cannot host boxes: {found}.",
                )
            checks = EnvironmentChecks.from_report(report)
        resources = _detect_resources(box) if detect_resources else None
    return ConnectionReport(actual, round(latency * 1000), resources, checks)


def _detect_resources(box: ssh.BoxSession) -> Resources:
    result = box.run(
        "nproc && awk '/^MemTotal:/ {print $2}' /proc/meminfo"
        " && df -Pk \"$HOME\" | awk 'NR==2 {print $2}'"
    )
    try:
        cpu, mem_kb, disk_kb = (int(line) for line in result.output.split())
    except ValueError:
        raise TransientError(
            f"could not read resources: {result.output[:200]!r}",
            safe_message="Could not read the server's CPU, memory and disk.",
        ) from None
    gib = 1024 * 1024
    # MemTotal excludes memory the kernel reserves: round, so a 4 GB machine reads 4, not 3.
    return Resources(cpu, max(1, round(mem_kb / gib)), max(1, disk_kb // gib))


def add_server(
    session: Session,
    spec: ServerSpec,
    *,
    encryption_key: bytes,
    connect_check: ConnectCheck = check_connection,
    allowed_networks: Iterable[IPNetwork] | None = None,
    resolve: Resolver | None = None,
    happy_server_url: str = "",
    skip_checks: bool = False,
) -> Server:
    """:func:`admit_server` without the preflight findings."""
    return admit_server(
        session,
        spec,
        encryption_key=encryption_key,
        connect_check=connect_check,
        allowed_networks=allowed_networks,
        resolve=resolve,
        happy_server_url=happy_server_url,
        skip_checks=skip_checks,
    ).server


def admit_server(
    session: Session,
    spec: ServerSpec,
    *,
    encryption_key: bytes,
    connect_check: ConnectCheck = check_connection,
    allowed_networks: Iterable[IPNetwork] | None = None,
    resolve: Resolver | None = None,
    happy_server_url: str = "",
    skip_checks: bool = False,
) -> Admission:
    """Admit a server to the pool (state ``available``) after one successful SSH login.

    The login must pass the environment preflight (:func:`check_connection`), else 422
    ``server_check_failed`` naming each problem and its fix. ``happy_server_url`` is the
    backend's HAPPY_SERVER_URL: the URL box daemons get when the login's environment has
    none. ``skip_checks`` skips the preflight only (host key pinning and the login stay
    required); it is logged as a warning and reported in the admission's checks.

    ``allowed_networks`` (the API and CLI pass POOL_ALLOWED_NETWORKS): every address of the
    host must be in one of them (empty: any address), checked before any connection, else
    422 ``server_host_not_allowed`` (:func:`check_host_allowed`); None skips the check.

    The host key is pinned as presented, or compared with ``spec.host_key_fingerprint``
    (mismatch -> 409 ``host_key_mismatch``, nothing stored, credentials never offered).
    Unreachable -> 422 ``server_unreachable``; refused login -> 422 ``ssh_auth_failed``;
    a server with the same (host, port, user) -> 409 ``server_exists``.
    """
    _validate_spec(spec)
    host, user = spec.host.strip().lower(), spec.user.strip()
    expected = (
        normalize_fingerprint(spec.host_key_fingerprint) if spec.host_key_fingerprint else None
    )
    where = f"{user}@{host}:{spec.port}"
    if _find(session, host, spec.port, user) is not None:
        raise ConflictError(f"{where} is already in the pool", code="server_exists")
    if allowed_networks is not None:
        if spec.gateway is None:
            check_host_allowed(host, spec.port, allowed_networks, resolve=resolve)
        else:
            # We connect to the gateway; the server's name may resolve only there, so it is
            # checked when it is an address.
            networks = list(allowed_networks)
            check_host_allowed(spec.gateway.host, spec.gateway.port, networks, resolve=resolve)
            if _is_ip_literal(host):
                check_host_allowed(host, spec.port, networks, resolve=resolve)

    target = SSHTarget(
        host=host,
        port=spec.port,
        user=user,
        password=spec.password,
        private_key=spec.private_key,
        host_key_fingerprint=expected,
        gateway=spec.gateway.target() if spec.gateway is not None else None,
    )
    detect = None in (spec.cpu_cores, spec.ram_gb, spec.disk_gb)
    if skip_checks:
        log.warning("pool: adding %s with the environment checks skipped (operator)", where)
    report = _run_check(
        connect_check,
        target,
        where,
        detect_resources=detect,
        check_environment=not skip_checks,
        happy_server_url=happy_server_url,
    )
    if expected is not None and report.host_key_fingerprint != expected:
        raise _mismatch(where, expected, report.host_key_fingerprint)
    resources = report.resources
    if detect and resources is None:
        raise ValidationError(
            "Could not read the server's resources; give cpu, ram and disk explicitly",
            errors={n: ["Required."] for n in ("cpu_cores", "ram_gb", "disk_gb")},
        )

    server_id = uuid.uuid4()
    secret = spec.password if spec.password is not None else spec.private_key
    assert secret is not None  # _validate_spec
    server = Server(
        id=server_id,
        host=host,
        ssh_port=spec.port,
        ssh_user=user,
        auth_method="password" if spec.password is not None else "key",
        credential_encrypted=encrypt_str(encryption_key, secret, aad=_credential_aad(server_id)),
        host_key_fingerprint=report.host_key_fingerprint,
        cpu_cores=spec.cpu_cores or (resources.cpu_cores if resources else 0),
        ram_gb=spec.ram_gb or (resources.ram_gb if resources else 0),
        disk_gb=spec.disk_gb or (resources.disk_gb if resources else 0),
        region=spec.region,
        label=spec.label,
        state="available",
        consecutive_failures=0,
        last_checked_at=_now(),
        last_latency_ms=report.latency_ms,
    )
    if spec.gateway is not None:
        gateway = spec.gateway.target()
        gateway_secret = gateway.password if gateway.password is not None else gateway.private_key
        assert gateway_secret is not None  # _validate_gateway
        server.gateway_host = gateway.host
        server.gateway_port = gateway.port
        server.gateway_user = gateway.user
        server.gateway_auth_method = "password" if gateway.password is not None else "key"
        server.gateway_credential_encrypted = encrypt_str(
            encryption_key, gateway_secret, aad=_gateway_credential_aad(server_id)
        )
        server.gateway_host_key_fingerprint = gateway.host_key_fingerprint
    try:
        with session.begin_nested():
            session.add(server)
            session.flush()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "") or ""
        if constraint == UNIQUE_CONSTRAINT:
            raise ConflictError(f"{where} is already in the pool", code="server_exists") from None
        raise
    wake_waiting_boxes(session, server)
    checks = report.checks or (SKIPPED_CHECKS if skip_checks else EnvironmentChecks(False))
    log.info(
        "pool: server %s added (%s, %s auth, host key %s, happy %s, Happy server %s: %s)",
        server.id,
        where,
        server.auth_method,
        server.host_key_fingerprint,
        checks.happy_version,
        checks.happy_server_url or "-",
        "checks skipped" if checks.skipped else checks.happy_server_reach,
    )
    return Admission(server, checks)


def repin_server(
    session: Session,
    server_id: uuid.UUID,
    *,
    private_key: str,
    host_key_fingerprint: str,
    encryption_key: bytes,
    connect_check: ConnectCheck = check_connection,
) -> Server:
    """Replace a server's login key and pinned host key, after one successful login with
    both (the host must present ``host_key_fingerprint``). For an operator who re-keyed the
    server on purpose, e.g. the development demo box after ``var/demo`` was deleted."""
    server = get_server(session, server_id, for_update=True)
    expected = normalize_fingerprint(host_key_fingerprint)
    where = f"{server.ssh_user}@{server.host}:{server.ssh_port}"
    target = SSHTarget(
        host=server.host,
        port=server.ssh_port,
        user=server.ssh_user,
        private_key=private_key,
        host_key_fingerprint=expected,
    )
    # Only the keys change here; the environment was checked when the server was admitted.
    report = _run_check(
        connect_check,
        target,
        where,
        detect_resources=False,
        check_environment=False,
        happy_server_url="",
    )
    if report.host_key_fingerprint != expected:
        raise _mismatch(where, expected, report.host_key_fingerprint)
    server.auth_method = "key"
    server.credential_encrypted = encrypt_str(
        encryption_key, private_key, aad=_credential_aad(server.id)
    )
    server.host_key_fingerprint = report.host_key_fingerprint
    session.flush()
    log.warning("pool: server %s re-pinned (%s, host key %s)", server.id, where, expected)
    return server


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _run_check(
    connect_check: ConnectCheck,
    target: SSHTarget,
    where: str,
    *,
    detect_resources: bool,
    check_environment: bool,
    happy_server_url: str,
) -> ConnectionReport:
    try:
        return connect_check(
            target,
            detect_resources=detect_resources,
            check_environment=check_environment,
            happy_server_url=happy_server_url,
        )
    except HostKeyMismatchError as exc:
        log.warning("pool: refused %s: %s", where, exc)
        raise ConflictError(
            f"{where}: the host key does not match ({exc})", code="host_key_mismatch"
        ) from None
    except SSHAuthError as exc:
        log.info("pool: login refused by %s: %s", where, exc)
        raise SSHLoginFailedError(
            f"SSH login to {where} failed: {exc.safe_message} Check the user and credential."
        ) from None
    except (HostUnreachableError, TransientError) as exc:
        log.info("pool: %s unreachable: %s", where, exc)
        raise ServerUnreachableError(f"Could not reach {where} over SSH: {exc}") from None
    except IntegrationError as exc:
        log.info("pool: refused %s: %s", where, exc.safe_message)
        raise ValidationError(
            f"{where} cannot be used: {exc.safe_message} To admit it anyway, use "
            "--skip-checks (CLI) or skipChecks: true (API).",
            code="server_check_failed",
        ) from None


def _mismatch(where: str, expected: str, actual: str) -> ConflictError:
    return ConflictError(
        f"{where} presented host key {actual}, not the expected {expected}",
        code="host_key_mismatch",
    )
