"""The server pool: admitting SSH hosts, operator state changes, allocation and health.

Admission (:func:`admit_server`) pins the host key and proves the credentials with one real
login before anything is stored, and in that login runs the environment preflight (root or
``sudo -n``, ``happy`` on the login PATH and its version, HAPPY_SERVER_URL and a route from
the server to it), refusing a server boxes could not work on (``skip_checks`` skips the
preflight only). The credential is sealed with AES-256-GCM and bound to its row (the AAD
names the server id), so a sealed value copied onto another row does not open.

State model (``servers.state``)::

    available --allocate--> allocated --release--> available | cleaning
    cleaning  --release--> available
    any       --quarantine / K failed probes--> unhealthy --probe ok / operator--> available
    operator: available | allocated | unhealthy | cleaning --> draining --> available
              anything without a live box --> retired

Rules an operator cannot break:

- ``allocated`` is set only by :func:`allocate_server`. Asking for ``available`` on a
  server that still hosts a live box (status <> 'terminated') restores ``allocated``.
- ``draining`` is allowed while a box is on the server and means "do not reallocate after
  release": :func:`release_server` leaves a draining server draining (so do ``retired`` and
  ``unhealthy``: an operator's or the health check's decision outlives the box).
- ``retired`` and ``unhealthy`` are refused while a live box holds the server
  (``server_allocated``), and ``cleaning`` cannot be turned into ``available`` by hand
  (the previous box's credentials may still be on it).
- :func:`remove_server` deletes a server no box ever used; one that boxes reference
  historically is marked ``retired`` instead, so the boxes keep their server id.

HTTP mapping of the errors raised here: ``validation_error`` / ``server_unreachable`` /
``ssh_auth_failed`` / ``server_check_failed`` -> 422 (the request describes no usable
server), ``host_key_mismatch`` / ``server_exists`` / ``server_allocated`` /
``invalid_state_transition`` -> 409, ``server_not_found`` -> 404.

No Flask here and no commits: the caller (request, task or CLI command) owns the
transaction; functions flush when they need ids or constraint checks.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Uuid, column, exists, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.crypto import decrypt_str, encrypt_str
from app.errors import (
    ConflictError,
    HostKeyMismatchError,
    HostUnreachableError,
    IntegrationError,
    InvalidStateError,
    NotFoundError,
    SSHAuthError,
    TransientError,
    ValidationError,
)
from app.integrations import ssh
from app.integrations.box_host import BoxEnvironmentError, BoxHost, EnvironmentReport
from app.integrations.ssh import SSHTarget
from app.models import Plan, Server, VibeBox
from app.services import jobs
from app.services.boxes import events

log = logging.getLogger(__name__)

FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
PRIVATE_KEY_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
UNIQUE_CONSTRAINT = "uq_servers_host_ssh_port_ssh_user"
LIVE_BOX = VibeBox.status != "terminated"

# States an operator may ask for, by current state (see the module docstring).
OPERATOR_STATES = ("available", "draining", "unhealthy", "retired")
_TRANSITIONS: dict[str, frozenset[str]] = {
    "available": frozenset({"draining", "unhealthy", "retired"}),
    "allocated": frozenset({"available", "draining", "unhealthy", "retired"}),
    "cleaning": frozenset({"draining", "unhealthy", "retired"}),
    "unhealthy": frozenset({"available", "draining", "retired"}),
    "draining": frozenset({"available", "unhealthy", "retired"}),
    "retired": frozenset({"available", "draining"}),
}
# release_server leaves these alone: someone decided the server should not take a new box.
_STICKY_ON_RELEASE = frozenset({"draining", "unhealthy", "retired"})
_UPDATABLE = frozenset({"label", "region", "cpu_cores", "ram_gb", "disk_gb", "state"})


class ServerUnreachableError(ValidationError):
    """The server could not be reached over SSH."""

    code = "server_unreachable"


class SSHLoginFailedError(ValidationError):
    """The server refused the SSH credentials."""

    code = "ssh_auth_failed"


class HostNotAllowedError(ValidationError):
    """The server's address is outside POOL_ALLOWED_NETWORKS."""

    code = "server_host_not_allowed"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# ``resolve(host, port)``: every address the name stands for (getaddrinfo semantics).
Resolver = Callable[[str, int], list[IPAddress]]


def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, as the SSH client will look them up."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _plain(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` is 10.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_host_allowed(
    host: str,
    port: int,
    allowed_networks: Iterable[IPNetwork],
    *,
    resolve: Resolver | None = None,
) -> list[IPAddress]:
    """Refuse (422 ``server_host_not_allowed``) a host any of whose addresses is outside
    ``allowed_networks`` (empty: any address), or is unspecified (0.0.0.0, ::) or
    multicast. A name is resolved and every address it resolves to is checked; a name that
    does not resolve is 422 ``server_unreachable``. Returns the addresses."""
    networks = list(allowed_networks)
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(literal)]
    except ValueError:
        try:
            addresses = (resolve or resolve_addresses)(literal, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise ServerUnreachableError(f"Could not resolve {host}: {exc}") from None
    if not addresses:
        raise ServerUnreachableError(f"{host} resolves to no address")
    for address in map(_plain, addresses):
        refused = address.is_unspecified or address.is_multicast
        if not refused and networks:
            refused = not any(address in network for network in networks)
        if refused:
            raise HostNotAllowedError(
                f"{host} ({address}) is not in the networks pool servers may be in "
                "(POOL_ALLOWED_NETWORKS)",
                errors={"host": ["This address is not allowed for pool servers."]},
            )
    return addresses


# --- inputs and outputs ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GatewaySpec:
    """A bastion a pool server is reached through: its own login and a host key the
    operator gives (a gateway is never pinned on first contact)."""

    host: str
    port: int = 22
    user: str
    password: str | None = None
    private_key: str | None = None
    host_key_fingerprint: str

    def __repr__(self) -> str:  # never show the credential
        return f"GatewaySpec({self.user}@{self.host}:{self.port})"

    def target(self) -> SSHTarget:
        return SSHTarget(
            host=self.host.strip().lower(),
            port=self.port,
            user=self.user.strip(),
            password=self.password,
            private_key=self.private_key,
            host_key_fingerprint=normalize_fingerprint(self.host_key_fingerprint),
        )


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    """What an operator tells us about a new pool server. Resources left as ``None`` are
    read from the server itself during the admission login (``nproc``, MemTotal, ``df``)."""

    host: str
    port: int = 22
    user: str
    password: str | None = None
    private_key: str | None = None  # PEM / OpenSSH private key text
    host_key_fingerprint: str | None = None  # "SHA256:..."; None = pin what the host shows
    cpu_cores: int | None = None
    ram_gb: int | None = None
    disk_gb: int | None = None
    region: str | None = None
    label: str | None = None
    gateway: GatewaySpec | None = None  # reach the server through this bastion

    def __repr__(self) -> str:  # never show the credential
        via = f" via {self.gateway!r}" if self.gateway is not None else ""
        return f"ServerSpec({self.user}@{self.host}:{self.port}{via})"


@dataclass(frozen=True)
class Resources:
    cpu_cores: int
    ram_gb: int
    disk_gb: int


@dataclass(frozen=True)
class EnvironmentChecks:
    """The environment preflight of an admission, as the API and CLI report it."""

    skipped: bool
    happy_path: str | None = None
    happy_version: str = "unknown"  # of the happy-coder package `happy` belongs to
    happy_server_url: str | None = None  # what the server's box daemons will use
    happy_server_url_source: str | None = None  # "login" | "backend"
    happy_server_reach: str | None = None  # "ok" | "unreachable: ..." | "unknown"
    notes: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, report: EnvironmentReport) -> EnvironmentChecks:
        return cls(
            skipped=False,
            happy_path=report.operator.happy_path,
            happy_version=report.happy_version,
            happy_server_url=report.happy_server_url or None,
            happy_server_url_source=report.url_source,
            happy_server_reach=report.reach,
            notes=tuple(report.notes()),
        )


SKIPPED_CHECKS = EnvironmentChecks(
    skipped=True,
    notes=(
        "environment checks skipped (root/sudo, `happy` on the PATH, route to the Happy "
        "server): boxes may fail on this server",
    ),
)


@dataclass(frozen=True)
class ConnectionReport:
    """What the admission check learned: the host key it saw and, on request, resources
    and the environment preflight."""

    host_key_fingerprint: str
    latency_ms: int
    resources: Resources | None = None
    checks: EnvironmentChecks | None = None


# ``connect_check(target, detect_resources=..., check_environment=..., happy_server_url=...)``:
# log in to ``target`` once and report. ``target.host_key_fingerprint`` is the expected key or
# None ("tell me"); an implementation must refuse (HostKeyMismatchError) before offering
# credentials to a host whose key differs, and raise BoxEnvironmentError when
# ``check_environment`` finds that boxes cannot work on the server.
ConnectCheck = Callable[..., ConnectionReport]


@dataclass(frozen=True)
class Admission:
    """A server just admitted, with what its preflight found."""

    server: Server
    checks: EnvironmentChecks


@dataclass(frozen=True)
class ServerView:
    """A server with the live box it hosts (what the API and CLI show)."""

    server: Server
    allocated_box_id: uuid.UUID | None
    checks: EnvironmentChecks | None = None  # only right after admission


# --- admission ---------------------------------------------------------------------------


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


def normalize_fingerprint(value: str) -> str:
    """``SHA256:<base64>`` without padding, as ``ssh-keygen -lf`` prints it."""
    value = value.strip()
    if not FINGERPRINT_RE.match(value):
        raise ValidationError(
            "Host key fingerprints look like SHA256:<43 base64 characters>",
            errors={"host_key_fingerprint": ["Not a SHA256 host key fingerprint."]},
        )
    return value.rstrip("=")


def _credential_aad(server_id: uuid.UUID) -> str:
    return f"server-credential:{server_id}"


def _gateway_credential_aad(server_id: uuid.UUID) -> str:
    return f"server-gateway-credential:{server_id}"


def _validate_gateway(gateway: GatewaySpec, errors: dict[str, list[str]]) -> None:
    if (gateway.password is None) == (gateway.private_key is None):
        errors["gateway"] = ["Give exactly one of password and private key for the gateway."]
    elif gateway.private_key is not None and not PRIVATE_KEY_RE.search(gateway.private_key):
        errors["gateway"] = ["The gateway's private key is not a PEM or OpenSSH private key."]
    elif not gateway.host.strip() or not gateway.user.strip():
        errors["gateway"] = ["The gateway needs a host and a user."]
    elif not 1 <= gateway.port <= 65535:
        errors["gateway"] = ["The gateway's port must be between 1 and 65535."]
    elif not FINGERPRINT_RE.match(gateway.host_key_fingerprint.strip()):
        errors["gateway"] = ["The gateway's host key must be given as SHA256:<base64>."]


credential_aad = _credential_aad  # cloud servers are sealed the same way (services/capacity.py)


def _validate_spec(spec: ServerSpec) -> None:
    errors: dict[str, list[str]] = {}
    if (spec.password is None) == (spec.private_key is None):
        message = "Give exactly one of password and private key."
        errors["password"] = errors["private_key"] = [message]
    elif spec.password is not None and not spec.password:
        errors["password"] = ["Must not be empty."]
    elif spec.private_key is not None and not PRIVATE_KEY_RE.search(spec.private_key):
        errors["private_key"] = ["Not a PEM or OpenSSH private key."]
    if not spec.host.strip():
        errors["host"] = ["Must not be empty."]
    if not spec.user.strip():
        errors["user"] = ["Must not be empty."]
    if not 1 <= spec.port <= 65535:
        errors["port"] = ["Must be between 1 and 65535."]
    for name in ("cpu_cores", "ram_gb", "disk_gb"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            errors[name] = ["Must be at least 1."]
    if spec.gateway is not None:
        _validate_gateway(spec.gateway, errors)
    if errors:
        raise ValidationError("The server description is not valid", errors=errors)


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


def ssh_target_for(server: Server, encryption_key: bytes) -> SSHTarget:
    """How to log in to ``server`` (decrypts its credential; the host key stays pinned)."""
    secret = decrypt_str(
        encryption_key, server.credential_encrypted, aad=_credential_aad(server.id)
    )
    is_password = server.auth_method == "password"
    return SSHTarget(
        host=server.host,
        port=server.ssh_port,
        user=server.ssh_user,
        password=secret if is_password else None,
        private_key=None if is_password else secret,
        host_key_fingerprint=server.host_key_fingerprint,
        gateway=gateway_target_for(server, encryption_key),
    )


def gateway_target_for(server: Server, encryption_key: bytes) -> SSHTarget | None:
    """How to log in to ``server``'s gateway (None: the server is reached directly)."""
    if server.gateway_host is None or server.gateway_credential_encrypted is None:
        return None
    secret = decrypt_str(
        encryption_key,
        server.gateway_credential_encrypted,
        aad=_gateway_credential_aad(server.id),
    )
    is_password = server.gateway_auth_method == "password"
    return SSHTarget(
        host=server.gateway_host,
        port=server.gateway_port or 22,
        user=server.gateway_user or "root",
        password=secret if is_password else None,
        private_key=None if is_password else secret,
        host_key_fingerprint=server.gateway_host_key_fingerprint,
    )


# --- reading -----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _find(session: Session, host: str, port: int, user: str) -> Server | None:
    return session.scalars(
        select(Server).where(Server.host == host, Server.ssh_port == port, Server.ssh_user == user)
    ).first()


def get_server(session: Session, server_id: uuid.UUID, *, for_update: bool = False) -> Server:
    """The server, or 404 ``server_not_found``. ``for_update`` locks its row."""
    stmt = select(Server).where(Server.id == server_id)
    if for_update:
        stmt = stmt.with_for_update()
    server = session.scalars(stmt).first()
    if server is None:
        raise NotFoundError(f"No server {server_id}", code="server_not_found")
    return server


def list_servers(session: Session, state: str | None = None) -> list[Server]:
    """Pool servers, oldest first, optionally only those in ``state``."""
    stmt = select(Server).order_by(Server.created_at, Server.id)
    if state is not None:
        stmt = stmt.where(Server.state == state)
    return list(session.scalars(stmt))


def page_servers(
    session: Session, state: str | None = None, *, limit: int = 50, offset: int = 0
) -> tuple[list[Server], int]:
    """One page of :func:`list_servers` and how many servers match in all."""
    stmt = select(Server)
    if state is not None:
        stmt = stmt.where(Server.state == state)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = session.scalars(stmt.order_by(Server.created_at, Server.id).limit(limit).offset(offset))
    return list(page), total


def live_box_ids(session: Session, server_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Server id -> id of the live (not terminated) box on it."""
    ids = list(server_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(VibeBox.server_id, VibeBox.id).where(VibeBox.server_id.in_(ids), LIVE_BOX)
    )
    return {server_id: box_id for server_id, box_id in rows if server_id is not None}


def view_servers(session: Session, servers: Iterable[Server]) -> list[ServerView]:
    servers = list(servers)
    boxes = live_box_ids(session, (s.id for s in servers))
    return [ServerView(s, boxes.get(s.id)) for s in servers]


def view_server(session: Session, server: Server) -> ServerView:
    return view_servers(session, [server])[0]


def _live_box_id(session: Session, server_id: uuid.UUID) -> uuid.UUID | None:
    return live_box_ids(session, [server_id]).get(server_id)


# --- operator changes --------------------------------------------------------------------


def update_server(session: Session, server_id: uuid.UUID, **changes: Any) -> Server:
    """Change label, region, resources and/or state (operator rules in the module doc)."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValidationError(
            "These fields cannot be changed", errors={n: ["Unknown field."] for n in unknown}
        )
    for name in ("cpu_cores", "ram_gb", "disk_gb"):
        if name in changes and (not isinstance(changes[name], int) or changes[name] < 1):
            raise ValidationError(
                "Resources must be positive", errors={name: ["Must be at least 1."]}
            )
    server = get_server(session, server_id, for_update=True)
    for name in ("label", "region", "cpu_cores", "ram_gb", "disk_gb"):
        if name in changes:
            setattr(server, name, changes[name])
    if "state" in changes and changes["state"] is not None:
        _change_state(session, server, changes["state"])
    session.flush()
    return server


def _change_state(session: Session, server: Server, wanted: str) -> None:
    if wanted not in OPERATOR_STATES:
        raise ValidationError(
            f"State {wanted!r} cannot be set by hand",
            errors={"state": [f"Must be one of: {', '.join(OPERATOR_STATES)}."]},
        )
    current = server.state
    if wanted == current:
        return
    if wanted not in _TRANSITIONS.get(current, frozenset()):
        raise InvalidStateError(
            f"A server in state {current!r} cannot become {wanted!r}",
            code="invalid_state_transition",
        )
    box_id = _live_box_id(session, server.id)
    if box_id is not None:
        if wanted in ("retired", "unhealthy"):
            raise ConflictError(
                f"Server {server.id} hosts box {box_id}; drain it instead, or wait for the "
                "box to end",
                code="server_allocated",
            )
        if wanted == "available":
            wanted = "allocated"  # un-draining a server that still hosts its box
        box = session.get(VibeBox, box_id)
        if box is not None and wanted != current:
            events.record(
                session,
                box,
                f"server_{wanted}",
                f"An operator set this box's server to {wanted}"
                + (
                    " (no new boxes on it; this one keeps running)."
                    if wanted == "draining"
                    else "."
                ),
            )
    server.state = wanted
    if wanted == "available":
        wake_waiting_boxes(session, server)
    log.info("pool: server %s state %s -> %s (operator)", server.id, current, wanted)


def drain_server(session: Session, server_id: uuid.UUID) -> Server:
    """Take a server out of allocation; a box already on it keeps running. Idempotent."""
    return update_server(session, server_id, state="draining")


def remove_server(session: Session, server_id: uuid.UUID) -> Literal["deleted", "retired"]:
    """Delete a server no box ever used, else mark it ``retired`` (boxes keep their history).

    Refused (409 ``server_allocated``) while a live box holds it.
    """
    server = get_server(session, server_id, for_update=True)
    box_id = _live_box_id(session, server.id)
    if box_id is not None:
        raise ConflictError(
            f"Server {server.id} hosts box {box_id}; it can be removed once the box ends "
            "(drain it to stop new allocations)",
            code="server_allocated",
        )
    referenced = session.scalar(select(exists().where(VibeBox.server_id == server.id)))
    if referenced:
        server.state = "retired"
        session.flush()
        log.info("pool: server %s retired (boxes reference it)", server.id)
        return "retired"
    session.delete(server)
    session.flush()
    log.info("pool: server %s deleted", server_id)
    return "deleted"


# --- allocation (provisioning chain) -----------------------------------------------------


def allocate_server(session: Session, box: VibeBox) -> Server | None:
    """Give ``box`` the smallest available server that fits its plan; None when none fits.

    One statement (one round trip), ``_ALLOCATE``: it locks the box row, reads its plan and
    region, takes the server with ``FOR UPDATE SKIP LOCKED`` (concurrent allocations never
    pick the same server and never wait on each other) and gives it to the box.

    Idempotent: a box that already holds a server gets that server back. Two deliveries of
    the same step allocate once: the second waits on the box row's lock and then sees the
    row as the first committed it (PostgreSQL re-reads a row it locked after waiting),
    holding a server, so it takes none.

    Regions: a box of region R takes only servers whose region is R; a box without a
    region (regions off, or a box from before them) takes any server. So with REGIONS set,
    a server without a region serves no new box: give it one (``vibebox pool update``).
    """
    row = session.execute(
        select(Server, _HELD_ID)
        .from_statement(_ALLOCATE)
        .params(box_id=box.id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"No plan {box.plan_id!r}", code="plan_not_found")
    server, held_id = row
    if held_id is not None:  # a redelivery: the box kept what it had
        set_committed_value(box, "server_id", held_id)
        return session.get(Server, held_id)
    if server is None:
        log.info(
            "pool: no available server fits box %s (plan %s, region %s)",
            box.id,
            box.plan_id,
            box.region or "any",
        )
        return None
    # The statement wrote the box row: tell the session what it holds now.
    set_committed_value(box, "server_id", server.id)
    session.expire(box, ["updated_at"])
    log.info("pool: server %s allocated to box %s", server.id, box.id)
    return server


# One statement allocates (keep in step with ``capacity_shortfall`` and ``LIVE_BOX``):
# - ``box`` locks the box row and reads its server, region and plan's resources. Another
#   allocation for the same box makes it wait; READ COMMITTED then returns the row as that
#   one committed it (holding a server), so nothing below takes a second one.
# - ``taken`` marks allocated the smallest fitting available server (only for a box without
#   one), chosen FOR UPDATE SKIP LOCKED: concurrent allocations never pick the same server
#   nor wait on each other; ``given`` hands it to the box.
# - The result: no row when the box does not exist; else one row with the server taken
#   (all NULL when none fits) and ``held_id``, the server the box already held (or NULL).
_HELD_ID = column("held_id", Uuid)
_SERVER_COLUMNS = [c.name for c in Server.__table__.columns]  # in the mapped order
_ALLOCATE = text(
    f"""
    WITH box AS MATERIALIZED (
        SELECT v.server_id, v.region, p.cpu_cores, p.ram_gb, p.disk_gb
        FROM vibeboxes AS v JOIN plans AS p ON p.id = v.plan_id
        WHERE v.id = :box_id
        FOR UPDATE OF v
    ),
    taken AS (
        UPDATE servers SET state = 'allocated', updated_at = now()
        WHERE servers.id = (
            SELECT s.id FROM servers AS s, box
            WHERE box.server_id IS NULL
              AND s.state = 'available'
              AND s.cpu_cores >= box.cpu_cores
              AND s.ram_gb >= box.ram_gb
              AND s.disk_gb >= box.disk_gb
              AND (box.region IS NULL OR s.region = box.region)
              AND NOT EXISTS (
                  SELECT 1 FROM vibeboxes AS v
                  WHERE v.server_id = s.id AND v.status != 'terminated'
              )
            ORDER BY s.cpu_cores, s.ram_gb, s.disk_gb, s.created_at, s.id
            LIMIT 1
            FOR UPDATE OF s SKIP LOCKED
        )
        RETURNING servers.*
    ),
    given AS (
        UPDATE vibeboxes SET server_id = taken.id, updated_at = now()
        FROM taken
        WHERE vibeboxes.id = :box_id
    )
    SELECT {", ".join(f"taken.{name}" for name in _SERVER_COLUMNS)}, box.server_id AS held_id
    FROM box LEFT JOIN taken ON true
    """  # noqa: S608 - the f-string inserts the model's own column names, nothing else
).columns(*Server.__table__.columns, _HELD_ID)


def _in_region(region: str | None) -> list[Any]:
    """Conditions on ``Server`` for a box of ``region`` (None: any server)."""
    return [] if region is None else [Server.region == region]


def capacity_shortfall(session: Session, plan_id: str, *, region: str | None = None) -> str:
    """Why no server can take a box of ``plan_id`` (in ``region``) now, in words the owner
    can read."""
    plan = session.get(Plan, plan_id)
    if plan is None:
        return "Waiting for a free server."
    needs = f"{plan.cpu_cores} CPU / {plan.ram_gb} GB RAM / {plan.disk_gb} GB disk"
    where = f" in region {region}" if region is not None else ""
    fitting = session.scalar(
        select(func.count())
        .select_from(Server)
        .where(
            Server.state.in_(("available", "allocated", "cleaning", "draining")),
            Server.cpu_cores >= plan.cpu_cores,
            Server.ram_gb >= plan.ram_gb,
            Server.disk_gb >= plan.disk_gb,
            *_in_region(region),
        )
    )
    if fitting:
        return (
            f"All {fitting} server(s){where} that fit the {plan.id} plan ({needs}) are busy; "
            "waiting for one to free up."
        )
    largest = session.execute(
        select(Server.cpu_cores, Server.ram_gb, Server.disk_gb)
        .where(Server.state == "available", *_in_region(region))
        .order_by(Server.cpu_cores.desc(), Server.ram_gb.desc(), Server.disk_gb.desc())
        .limit(1)
    ).first()
    have = (
        f"the largest free one has {largest[0]} CPU / {largest[1]} GB RAM / {largest[2]} GB disk"
        if largest
        else "no server is free"
    )
    return (
        f"No server in the pool{where} fits the {plan.id} plan (needs {needs}; {have}); "
        "waiting for one."
    )


def wake_waiting_boxes(session: Session, server: Server | None = None, *, count: int = 1) -> int:
    """``count`` servers became available (``server``, when one is named): the OLDEST boxes
    waiting for capacity that such a server fits (plan and region), at most ``count`` of
    them, try allocation at once (after commit) instead of waiting out their backoff. The
    others keep waiting: their backoff (up to CAPACITY_RETRY_MAX_SECONDS) is only the
    fallback, so a freed server costs one allocation attempt, not one per waiting box.

    A woken box gets ``next_retry_at = now``: the countdown it was waiting on is then
    recognised as stale and dropped (``engine.claim``). Boxes locked by an allocation in
    progress are skipped (they are trying already). Returns how many were woken."""
    if count < 1:
        return 0
    query = (
        select(VibeBox)
        .where(VibeBox.status == "waiting_for_capacity")
        .order_by(VibeBox.created_at, VibeBox.id)
        .limit(count)
        .with_for_update(skip_locked=True, of=VibeBox)
    )
    if server is not None:
        query = query.join(Plan, Plan.id == VibeBox.plan_id).where(
            Plan.cpu_cores <= server.cpu_cores,
            Plan.ram_gb <= server.ram_gb,
            Plan.disk_gb <= server.disk_gb,
            # A box of region R takes only servers of R; a box without one takes any.
            VibeBox.region.is_(None)
            if server.region is None
            else (VibeBox.region.is_(None)) | (VibeBox.region == server.region),
        )
    woken = list(session.scalars(query))
    now = _now()
    for box in woken:
        box.next_retry_at = now
        jobs.enqueue(session, box.id, "allocate_server")
    if woken:
        log.info("pool: woke %d waiting box(es), oldest first", len(woken))
    return len(woken)


def release_server(
    session: Session,
    server_id: uuid.UUID,
    *,
    to_state: Literal["available", "cleaning"] = "available",
) -> Server:
    """The server no longer hosts a box: back to ``to_state``.

    A live box still pointing at the server is detached (``server_id = None``), since a
    released server must be free for the next allocation. ``draining``, ``unhealthy`` and
    ``retired`` stay as they are: draining means "do not reallocate after release".
    """
    if to_state not in ("available", "cleaning"):
        raise ValueError(f"cannot release to {to_state!r}")
    server = get_server(session, server_id, for_update=True)
    for box in session.scalars(
        select(VibeBox).where(VibeBox.server_id == server.id, LIVE_BOX).with_for_update()
    ):
        log.warning("pool: releasing server %s detaches live box %s", server.id, box.id)
        box.server_id = None
    if server.state not in _STICKY_ON_RELEASE:
        server.state = to_state
        if to_state == "available":
            server.idle_since = _now()
            wake_waiting_boxes(session, server)
    session.flush()
    log.info("pool: server %s released (%s)", server.id, server.state)
    return server


def quarantine_server(session: Session, server_id: uuid.UUID, reason: str) -> Server:
    """Mark a server ``unhealthy`` with ``reason`` (it is not allocated again until a probe
    or an operator restores it). Boxes are the caller's business: move them first."""
    server = get_server(session, server_id, for_update=True)
    previous = server.state
    if previous != "retired":
        server.state = "unhealthy"
    server.last_error = reason[:2000]
    server.consecutive_failures += 1
    session.flush()
    log.warning("pool: server %s quarantined (was %s): %s", server.id, previous, reason)
    return server


def record_probe(
    session: Session,
    server_id: uuid.UUID,
    ok: bool,
    latency_ms: int | None,
    error: str | None,
    *,
    unhealthy_after: int = 3,
) -> Server:
    """Record one health-check probe.

    ``unhealthy_after`` consecutive failures turn an ``available`` server ``unhealthy``; a
    successful probe resets the counter and sends an ``unhealthy`` server without a live box
    to ``cleaning`` (it may still hold a previous owner's credentials: it is scrubbed and
    verified before it is ``available`` again). Other states (allocated, cleaning, draining,
    retired) only get their counters updated.
    """
    server = get_server(session, server_id, for_update=True)
    server.last_checked_at = _now()
    if ok:
        server.consecutive_failures = 0
        server.last_latency_ms = latency_ms
        server.last_error = None
        if server.state == "unhealthy" and _live_box_id(session, server.id) is None:
            server.state = "cleaning"
            log.info("pool: server %s answers again; cleaning it before reuse", server.id)
    else:
        server.consecutive_failures += 1
        server.last_error = (error or "probe failed")[:2000]
        if server.state == "available" and server.consecutive_failures >= unhealthy_after:
            server.state = "unhealthy"
            log.warning(
                "pool: server %s unhealthy after %d failed probes: %s",
                server.id,
                server.consecutive_failures,
                server.last_error,
            )
    session.flush()
    return server


# --- cleaning between owners ------------------------------------------------------------


def cleanliness_problem(box: ssh.BoxSession) -> str | None:
    """What a box from before per-box users left in the pool login's ~/.happy."""
    if box.daemon_status():
        return "the Happy daemon of the pool login still runs"
    result = box.run('d="${HAPPY_HOME_DIR:-$HOME/.happy}"; test -e "$d/access.key" && echo present')
    if "present" in result.output:
        return "the pool login's access.key is still there"
    return None


def scrub(host: BoxHost, server_id: str) -> str | None:
    """Remove every box user we created on the server (and a pre-per-box-user login's
    Happy state), then check by uid; returns what is left (None: clean). Idempotent."""
    problems = []
    for user in host.box_users(server_id):
        host.remove_user(user)
        problem = host.leftovers(user)
        if problem:
            problems.append(problem)
    session = host.session
    if session.run("command -v happy >/dev/null").exit_status == 0:
        session.stop_daemon()
        session.wipe_credentials()
        problem = cleanliness_problem(session)
        if problem:
            problems.append(problem)
    return "; ".join(problems) if problems else None


def record_cleaning_failure(session: Session, server_id: uuid.UUID, reason: str) -> int:
    """A cleaning attempt failed for now: count it (the retry budget lives on the row)."""
    server = get_server(session, server_id, for_update=True)
    server.consecutive_failures += 1
    server.last_error = reason[:2000]
    session.flush()
    return server.consecutive_failures


def servers_in_cleaning(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(Server.id).where(Server.state == "cleaning")))


def finish_cleaning(session: Session, server_id: uuid.UUID) -> Server:
    """A verified-clean server goes back to the pool (a no-op unless it is cleaning)."""
    server = get_server(session, server_id, for_update=True)
    if server.state == "cleaning":
        server.state = "available"
        server.idle_since = _now()
        server.last_error = None
        server.consecutive_failures = 0
        wake_waiting_boxes(session, server)
        log.info("pool: server %s cleaned and available", server.id)
    return server
