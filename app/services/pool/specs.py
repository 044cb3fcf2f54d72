"""What an operator says about a pool server and what its admission reports (dataclasses,
validation, the admission errors).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import ValidationError
from app.integrations.box_host import EnvironmentReport
from app.integrations.ssh import SSHTarget
from app.models import Server

FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


PRIVATE_KEY_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


class ServerUnreachableError(ValidationError):
    """The server could not be reached over SSH."""

    code = "server_unreachable"


class SSHLoginFailedError(ValidationError):
    """The server refused the SSH credentials."""

    code = "ssh_auth_failed"


class HostNotAllowedError(ValidationError):
    """The server's address is outside POOL_ALLOWED_NETWORKS."""

    code = "server_host_not_allowed"


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


def normalize_fingerprint(value: str) -> str:
    """``SHA256:<base64>`` without padding, as ``ssh-keygen -lf`` prints it."""
    value = value.strip()
    if not FINGERPRINT_RE.match(value):
        raise ValidationError(
            "Host key fingerprints look like SHA256:<43 base64 characters>",
            errors={"host_key_fingerprint": ["Not a SHA256 host key fingerprint."]},
        )
    return value.rstrip("=")


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
