"""The settings object: every variable of every process, read from the environment once.

``Settings.from_env()`` builds it, validated, from nested sections (``provisioning``,
``limits``, ``cloud``, ``regions``, ``celery``, ``beat``, ``web``, ``bootstrap``, ``log``,
``flower``) and the payment providers' own variables. A field declared with
:func:`setting` names its variable and default once; marshmallow's fields parse and
validate the text (environs is marshmallow over ``os.environ``; a section here also loads
from any mapping, which the tests and the CLI use). Processes that must not need the
database load their section alone: the Celery app (``CelerySettings``, ``BeatSettings``;
celery_config.py turns them into Celery's options), gunicorn (``WebSettings``), the
worker's log set-up (``LogSettings``), Flower's launcher (``FlowerSettings``). No other
module reads the environment for configuration. The environment comes first, then the
checkout's ``.env`` (:func:`environment`; never in testing); tests/test_docs.py checks
.env.example and the README against :func:`variables`.

Every variable is documented in README.md and .env.example. In development and testing
secrets fall back to fixed, clearly-marked defaults; in production a missing, publicly known
or weak secret is a start-up error (README, Security), never a silent default.

Over 400 lines: every setting's declaration, default and validation message lives here,
once for all processes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from marshmallow import ValidationError
from marshmallow import fields as mm_fields

T = TypeVar("T")

DEV_SECRET = "dev-insecure-secret-change-me"  # noqa: S105 - development only, refused in production
DEV_JWT_SECRET = DEV_SECRET + "-jwt"
# A fixed, public 32-byte key, base64; development/testing only, refused in production.
DEV_ENCRYPTION_KEY = base64.b64encode(b"vibebox-dev-encryption-key-32by!").decode()


PRODUCTION_SECRETS = ("SECRET_KEY", "JWT_SECRET_KEY", "ENCRYPTION_KEY")

# --- production secret checks -------------------------------------------------------------
# How to make a good value; quoted in every refusal.
GENERATE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'  # noqa: S105
GENERATE_ENCRYPTION_KEY = (
    'python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"'
)
MIN_SECRET_LENGTH = 32
# Shannon entropy of the characters; random hex is ~3.4-4 bits, token_urlsafe ~4.5-6.
MIN_SECRET_BITS_PER_CHAR = 2.5
# zxcvbn's guess estimate: repeats, sequences, keyboard walks and a few dictionary words fall
# far below this; random strings of 32+ characters are far above it.
MIN_SECRET_GUESSES_LOG10 = 20
# Random keys never contain these; copied placeholders do.
PLACEHOLDER_MARKERS = ("changeme", "change-me", "change_me", "insecure", "placeholder")
ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"
KNOWN_WHERE = "a development default or a value from .env.example"


class ConfigError(RuntimeError):
    """The environment does not describe a runnable configuration."""


def served_base_url(host: str | None, port: str | int | None) -> str:
    """The URL of the address the API is served on (HOST, PORT): the default of
    PUBLIC_BASE_URL. A wildcard address (0.0.0.0, ::, empty) is shown as 127.0.0.1 (the
    server answers there); an IPv6 literal gets brackets. Never taken from a request's
    Host header (a client could point links and webhook URLs anywhere)."""
    name = (host or "").strip().strip("[]")
    if name in ("", "0.0.0.0", "::", "*"):  # noqa: S104 - displayed, not bound
        name = "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{str(port or '').strip() or '5000'}"


Environ = Mapping[str, str]
DOTENV = Path(__file__).resolve().parents[1] / ".env"


def environment() -> dict[str, str]:
    """Where settings come from: the process environment over the non-empty values of
    ``.env`` (the checkout's, as ``make run`` reads it, so a hand-run ``vibebox`` command sees
    the same secrets). Testing never reads ``.env`` (it describes the development stack);
    the production image has none (.dockerignore), so there it is the environment alone."""
    env = dict(os.environ)
    if (env.get("VIBEBOX_ENV") or "").strip().lower() == "testing" or not DOTENV.is_file():
        return env
    from dotenv import dotenv_values

    values = {k: v for k, v in dotenv_values(DOTENV).items() if v is not None and v.strip()}
    return {**values, **env}


def _raw(environ: Environ, name: str) -> str | None:
    """A variable's value; unset and blank are the same (so `.env.example`'s empty lines
    mean "the default")."""
    value = environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


# How a variable's text becomes a value: marshmallow's fields, which also validate our API.
_PARSERS: dict[Any, tuple[mm_fields.Field, str]] = {
    int: (mm_fields.Integer(strict=False), "an integer"),
    float: (mm_fields.Float(allow_nan=False), "a number"),
    bool: (mm_fields.Boolean(), "a boolean (1/0, true/false, yes/no, on/off)"),
}


def _parse(name: str, raw: str, kind: Any) -> Any:
    parser = _PARSERS.get(kind)
    if parser is None:
        return raw
    try:
        return parser[0].deserialize(raw)
    except ValidationError:
        raise ConfigError(f"{name} must be {parser[1]}, got {raw!r}") from None


def setting(
    env: str,
    default: Any = None,
    *,
    check: Callable[[Any], str | None] | None = None,
    parse: Callable[[str, str], Any] | None = None,
    secret: bool = False,
) -> Any:
    """A settings field read from the variable ``env``: parsed by the field's type (int,
    float, bool, str) or by ``parse(name, raw)``, then ``check(value)`` names what is wrong
    (None: fine). Unset or blank: ``default``. The one place a default is written."""
    meta = {"env": env, "check": check, "parse": parse, "secret": secret}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable default")
    return field(default=default, metadata=meta)


def load(cls: type[T], environ: Environ | None = None, **given: Any) -> T:
    """Build the settings dataclass ``cls`` from ``environ`` (default: the process
    environment): every field declared with :func:`setting`, its default when unset;
    ``given`` values win. Errors are ConfigError naming the variable."""
    environ = environment() if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("env")
        if f.name in given or name is None:
            continue
        raw = _raw(environ, name)
        if raw is None:
            continue
        kind = hints[f.name]
        kind = next((k for k in get_args(kind) if k is not type(None)), kind)
        parse = f.metadata["parse"]
        value = parse(name, raw) if parse else _parse(name, raw, kind)
        problem = f.metadata["check"](value) if f.metadata["check"] else None
        if problem:  # a secret's value is never repeated
            raise ConfigError(
                f"{name} {problem}" + ("" if f.metadata["secret"] else f", got {raw!r}")
            )
        values[f.name] = value
    return cls(**{**values, **given})


def _variable(cls: type, name: str) -> str:
    """The variable of ``cls``'s field ``name``."""
    return next(f.metadata["env"] for f in fields(cls) if f.name == name)


def variables(cls: type) -> list[str]:
    """The variables ``cls`` (a settings dataclass) and its sections read, in order."""
    names: list[str] = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("env"):
            names.append(f.metadata["env"])
        names.extend(f.metadata.get("extra_env", ()))
        if is_dataclass(hints[f.name]):
            names.extend(variables(hints[f.name]))
    return names


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def at_least_zero(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be a positive integer"


@lru_cache(maxsize=1)
def known_public_values() -> frozenset[str]:
    """Values anyone can read in this repository: the development defaults and every value in
    .env.example. None of them is a secret, so production refuses them as secrets."""
    values = {DEV_SECRET, DEV_JWT_SECRET, DEV_ENCRYPTION_KEY}
    try:
        lines = ENV_EXAMPLE.read_text().splitlines()
    except OSError:  # not shipped with this installation: the constants above still apply
        lines = []
    for line in lines:
        name, sep, value = line.partition("=")
        if line.lstrip().startswith("#") or not sep or not name.strip():
            continue
        value = value.strip().strip("'\"").strip()
        if value:
            values.add(value)
    return frozenset(values)


def _bits_per_char(value: str) -> float:
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def secret_problem(name: str, value: str) -> str | None:
    """Why ``value`` is not fit as the production ``name`` (SECRET_KEY, JWT_SECRET_KEY), or
    None. The message never repeats the value."""
    fix = f"generate one with: {GENERATE_SECRET}"
    if value in known_public_values():
        return f"{name} is a publicly known value ({KNOWN_WHERE}); {fix}"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} is too short ({len(value)} characters, at least {MIN_SECRET_LENGTH}); {fix}"
    lowered = value.lower()
    if any(marker in lowered for marker in PLACEHOLDER_MARKERS):
        return f"{name} looks like a placeholder; {fix}"
    if _bits_per_char(value) < MIN_SECRET_BITS_PER_CHAR:
        return f"{name} has too little entropy (too few distinct characters); {fix}"
    from zxcvbn import zxcvbn

    if zxcvbn(value, max_length=len(value))["guesses_log10"] < MIN_SECRET_GUESSES_LOG10:
        return f"{name} is guessable (repeats, sequences or common words); {fix}"
    return None


def _decode_key(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return None


def encryption_key_problem(value: str, key: bytes) -> str | None:
    """Why the (valid, 32-byte) ENCRYPTION_KEY is not fit for production, or None."""
    fix = f"generate one with: {GENERATE_ENCRYPTION_KEY}"
    known = {_decode_key(v) for v in known_public_values()} - {None}
    if value in known_public_values() or key in known:
        return f"ENCRYPTION_KEY is a publicly known value ({KNOWN_WHERE}); {fix}"
    if len(set(key)) == 1:
        return f"ENCRYPTION_KEY is one byte repeated (e.g. all zero); {fix}"
    if len(set(key)) < 16:  # 32 random bytes have ~31 distinct values; < 16 is ~impossible
        return f"ENCRYPTION_KEY is degenerate ({len(set(key))} distinct bytes of 32); {fix}"
    return None


def production_secret_problems(
    secret_key: str, jwt_secret_key: str, key_b64: str, key: bytes
) -> list[str]:
    problems = [
        p
        for p in (
            secret_problem("SECRET_KEY", secret_key),
            secret_problem("JWT_SECRET_KEY", jwt_secret_key),
            encryption_key_problem(key_b64, key),
        )
        if p
    ]
    if secret_key == jwt_secret_key:
        problems.append(
            f"JWT_SECRET_KEY must differ from SECRET_KEY; generate one with: {GENERATE_SECRET}"
        )
    return problems


def database_url(environ: Environ | None = None) -> str:
    """DATABASE_URL alone (the CLI's migrations need nothing else), normalized."""
    url = _raw(environment() if environ is None else environ, "DATABASE_URL")
    if url is None:
        raise ConfigError("DATABASE_URL is not set")
    return normalize_database_url(url)


def normalize_database_url(url: str) -> str:
    """Accept plain ``postgres://``/``postgresql://`` URLs and pick the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


KNOWN_PROVIDERS = ("stripe", "wechat", "alipay", "dev")


# With PAYMENT_PROVIDERS unset, development checks out with the local dev provider (the
# offline demo of `make run`); testing and production enable nothing unless configured.
DEFAULT_PROVIDERS = {"development": ("dev",)}


def _providers(environ: Environ, env: str) -> tuple[str, ...]:
    raw = _raw(environ, "PAYMENT_PROVIDERS")
    if raw is None:
        return DEFAULT_PROVIDERS.get(env, ())
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in KNOWN_PROVIDERS]
    if unknown:
        raise ConfigError(
            f"PAYMENT_PROVIDERS has unknown provider(s) {unknown}; known: {list(KNOWN_PROVIDERS)}"
        )
    if "dev" in names and env == "production":
        raise ConfigError("the dev payment provider cannot be enabled in production")
    return names


def _box_user_prefix(value: str) -> str | None:
    if re.fullmatch(r"[a-z_][a-z0-9_-]{0,15}", value):
        return None
    return "must be 1-16 of a-z, 0-9, '_' and '-' starting with a letter or '_'"


@dataclass(frozen=True)
class ProvisioningSettings:
    """Retry budgets and timeouts of the provisioning chain and its reconciler."""

    # per step, for transient faults
    max_attempts: int = setting("PROVISION_MAX_ATTEMPTS", 8, check=at_least_one)
    retry_base_seconds: float = setting("PROVISION_RETRY_BASE_SECONDS", 2.0, check=positive)
    retry_max_seconds: float = setting("PROVISION_RETRY_MAX_SECONDS", 300.0, check=positive)
    # Waiting for capacity is woken by the event (a server freed, added or made available
    # wakes the oldest waiting boxes it fits); this backoff is only the fallback.
    capacity_retry_max_seconds: float = setting("CAPACITY_RETRY_MAX_SECONDS", 300.0, check=positive)
    # servers tried before the box fails
    max_server_moves: int = setting("PROVISION_MAX_SERVER_MOVES", 3, check=at_least_zero)
    # a step with no progress this long is re-enqueued
    stuck_after_seconds: float = setting("STUCK_STEP_SECONDS", 600.0, check=positive)
    mark_running_timeout_seconds: float = setting(
        "MARK_RUNNING_TIMEOUT_SECONDS", 90.0, check=positive
    )
    # Detection polls the Happy server after 0.05 s, doubling up to the cap of 1 s: a daemon
    # that registers at once is seen within ~50 ms, a slow one costs one request a second.
    mark_running_first_poll_seconds: float = setting(
        "MARK_RUNNING_FIRST_POLL_SECONDS", 0.05, check=positive
    )
    mark_running_poll_seconds: float = setting("MARK_RUNNING_POLL_SECONDS", 1.0, check=positive)
    happy_timeout_seconds: float = setting("HAPPY_TIMEOUT_SECONDS", 10.0, check=positive)
    ssh_connect_timeout_seconds: float = setting(
        "SSH_CONNECT_TIMEOUT_SECONDS", 10.0, check=positive
    )
    ssh_command_timeout_seconds: float = setting(
        "SSH_COMMAND_TIMEOUT_SECONDS", 60.0, check=positive
    )
    ssh_pool_max_idle_seconds: float = setting("SSH_POOL_MAX_IDLE_SECONDS", 10.0)
    # + 12 hex of the box id: the box's Unix user
    box_user_prefix: str = setting("BOX_USER_PREFIX", "vb-", check=_box_user_prefix)
    # automatic restarts of a crashed daemon per window
    daemon_max_restarts: int = setting("DAEMON_MAX_RESTARTS", 3, check=at_least_zero)
    daemon_restart_window_seconds: float = setting(
        "DAEMON_RESTART_WINDOW_SECONDS", 3600.0, check=positive
    )
    # doubles with each restart in the window
    daemon_restart_backoff_seconds: float = setting(
        "DAEMON_RESTART_BACKOFF_SECONDS", 30.0, check=at_least_zero
    )

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> ProvisioningSettings:
        return load(cls, environ)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    """Comma- or space-separated CIDRs (a bare address is a /32 or /128)."""
    networks = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP network (CIDR)") from None
    return tuple(networks)


@dataclass(frozen=True)
class WebSettings:
    """The API's gunicorn processes (app/gunicorn_config.py loads only this section)."""

    threads: int = setting("WEB_THREADS", 16, check=at_least_one)  # per gthread worker
    # Long polls one web process holds at once; None: half of WEB_THREADS.
    max_waiters: int | None = setting("WEB_MAX_WAITERS", None)

    def __post_init__(self) -> None:
        waiters = max(self.threads // 2, 1) if self.max_waiters is None else self.max_waiters
        if not 0 <= waiters < self.threads:
            raise ConfigError(
                f"WEB_MAX_WAITERS must be from 0 to WEB_THREADS - 1 ({self.threads - 1}), got "
                f"{waiters}: long polls must leave threads for other requests"
            )
        object.__setattr__(self, "max_waiters", waiters)


DEFAULT_WEB_THREADS = WebSettings.threads


def web_threads() -> int:
    """WEB_THREADS: threads per gunicorn worker (gthread)."""
    return load(WebSettings).threads


def prometheus_multiproc_dir(environ: Environ | None = None) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR (prometheus_client's own variable, which it also reads):
    metrics are shared across processes through files there; None: one process's only."""
    # the process environment only: prometheus_client reads the variable from there itself
    return _raw(os.environ if environ is None else environ, "PROMETHEUS_MULTIPROC_DIR")


def _basic_auth(value: str) -> str | None:
    for credential in value.split(","):
        user, sep, password = credential.partition(":")
        if not sep or not user.strip() or not password:
            return "must be user:password (comma-separated for several users)"
    return None


@dataclass(frozen=True)
class FlowerSettings:
    """Flower, the task dashboard (``python -m app.processes flower`` loads it alone)."""

    # user:password[,user2:password2]; empty: no auth (development only)
    basic_auth: str = setting("FLOWER_BASIC_AUTH", "", check=_basic_auth, secret=True)
    host: str = setting("HOST", "127.0.0.1")  # Flower listens beside the API
    port: int = setting(
        "FLOWER_PORT",
        5555,
        check=lambda p: None if 0 < p < 65536 else "is not a port number (1-65535)",
    )
    # Where operators open it (links from GET /); None: development's local address only
    url: str | None = setting("FLOWER_URL", None, parse=lambda _n, r: r.rstrip("/") + "/")

    def link(self, env: str) -> str | None:
        """FLOWER_URL, else (development) Flower's address under `make run`."""
        if self.url is not None or env != "development":
            return self.url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}/"

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> FlowerSettings:
        return load(cls, environ)


@dataclass(frozen=True)
class LimitSettings:
    """What a request may carry, and where pool servers may be (README "Security")."""

    # any request body, bytes
    max_content_length: int = setting("MAX_CONTENT_LENGTH", 1024 * 1024, check=at_least_one)
    # payment webhook bodies, bytes
    webhook_max_bytes: int = setting("WEBHOOK_MAX_BYTES", 256 * 1024, check=at_least_one)
    # Networks a pool server's addresses must all be in; empty: any address.
    pool_allowed_networks: tuple[IPNetwork, ...] = setting(
        "POOL_ALLOWED_NETWORKS", (), parse=_networks
    )

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> LimitSettings:
        return load(cls, environ)


REGION_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _region_name(name: str, value: str) -> str:
    if not REGION_RE.fullmatch(value):
        raise ConfigError(
            f"{name}: {value!r} is not a region name (1-32 of a-z, 0-9, '_', '-', "
            "starting with a letter or digit)"
        )
    return value


@dataclass(frozen=True)
class RegionSettings:
    """Regions boxes are sold in (README "Regions"). ``regions`` empty: regions are off,
    every box may take any server (the behaviour before regions existed)."""

    regions: tuple[str, ...] = field(default=(), metadata={"extra_env": ("REGIONS",)})
    default_region: str | None = field(default=None, metadata={"extra_env": ("DEFAULT_REGION",)})
    # (region, Happy server URL) pairs; a region without one uses HAPPY_SERVER_URL.
    happy_server_urls: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"extra_env": ("HAPPY_SERVER_URLS",)}
    )

    @property
    def enabled(self) -> bool:
        return bool(self.regions)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> RegionSettings:
        environ = environment() if environ is None else environ
        raw = _raw(environ, "REGIONS") or ""
        regions: list[str] = []
        for item in raw.replace(",", " ").split():
            region = _region_name("REGIONS", item.strip().lower())
            if region not in regions:
                regions.append(region)
        default = _raw(environ, "DEFAULT_REGION")
        if default is not None:
            default = default.lower()
            if not regions:
                raise ConfigError("DEFAULT_REGION is set but REGIONS is not")
            if default not in regions:
                raise ConfigError(f"DEFAULT_REGION {default!r} is not one of REGIONS {regions}")
        elif regions:
            default = regions[0]
        urls: list[tuple[str, str]] = []
        for item in (_raw(environ, "HAPPY_SERVER_URLS") or "").replace(",", " ").split():
            name, sep, url = item.partition("=")
            region = _region_name("HAPPY_SERVER_URLS", name.strip().lower())
            url = url.strip().rstrip("/")
            if not sep or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
                raise ConfigError(f"HAPPY_SERVER_URLS: {item!r} is not REGION=URL (an http(s) URL)")
            if region not in regions:
                raise ConfigError(f"HAPPY_SERVER_URLS names {region!r}, which is not in REGIONS")
            if any(r == region for r, _ in urls):
                raise ConfigError(f"HAPPY_SERVER_URLS names {region!r} twice")
            urls.append((region, url))
        return cls(regions=tuple(regions), default_region=default, happy_server_urls=tuple(urls))

    def configured_happy_url(self, region: str | None) -> str | None:
        """The Happy server URL configured for ``region`` in HAPPY_SERVER_URLS, or None."""
        return dict(self.happy_server_urls).get(region) if region else None


BOOTSTRAP_ENV_METHODS = ("pam_env", "sshd_setenv")
DEFAULT_ENV_FILES = {
    "pam_env": "/etc/environment",
    "sshd_setenv": "/etc/ssh/sshd_config.d/00-vibebox-happy.conf",
}


def _env_method(value: str) -> str | None:
    return None if value in BOOTSTRAP_ENV_METHODS else f"must be one of {BOOTSTRAP_ENV_METHODS}"


@dataclass(frozen=True)
class BootstrapSettings:
    """How ``vibebox pool bootstrap`` (and cloud-init user-data) prepare a host (README
    "Bootstrapping a server")."""

    # npm spec: name@version or a tarball
    happy_coder_package: str = setting("HAPPY_CODER_PACKAGE", "happy-coder@0.13.0")
    npm_prefix: str | None = setting("HAPPY_NPM_PREFIX", None)  # None: `npm prefix -g`
    node_install_command: str = setting(
        "BOOTSTRAP_NODE_INSTALL_COMMAND",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm",
    )
    # Where HAPPY_SERVER_URL (and PATH, when happy's bin dir is not on it) are set for the
    # login's non-interactive SSH sessions: pam_env (/etc/environment, read by sshd through
    # PAM on Debian/Ubuntu, no reload) or sshd_setenv (a SetEnv line in an sshd config file,
    # then the reload command).
    env_method: str = setting("BOOTSTRAP_ENV_METHOD", "pam_env", check=_env_method)
    env_file: str = setting("BOOTSTRAP_ENV_FILE", "")  # empty: the method's default file
    sshd_reload_command: str = setting(
        "BOOTSTRAP_SSHD_RELOAD_COMMAND",
        "sshd -t && (systemctl reload ssh || systemctl reload sshd || service ssh reload)",
    )
    install_timeout_seconds: float = setting(
        "BOOTSTRAP_INSTALL_TIMEOUT_SECONDS", 900.0, check=positive
    )

    def __post_init__(self) -> None:
        if not self.env_file:
            object.__setattr__(self, "env_file", DEFAULT_ENV_FILES[self.env_method])

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> BootstrapSettings:
        return load(cls, environ)


def _orphan_policy(value: str) -> str | None:
    return None if value in ("destroy", "report") else "must be destroy or report"


@dataclass(frozen=True)
class CloudSettings:
    """The capacity service (README "Cloud capacity")."""

    # instances with our tag and no live server: destroy|report
    orphan_policy: str = setting(
        "CLOUD_ORPHAN_POLICY", "destroy", check=_orphan_policy, parse=lambda _n, r: r.lower()
    )
    # also the beat period of the capacity sweep (BeatSettings reads the same variable)
    sweep_interval_seconds: float = setting("CLOUD_SWEEP_INTERVAL_SECONDS", 60.0, check=positive)
    # a node not reachable by then is destroyed, replaced
    boot_timeout_seconds: float = setting("CLOUD_BOOT_TIMEOUT_SECONDS", 600.0, check=positive)
    poll_seconds: float = setting("CLOUD_POLL_SECONDS", 5.0, check=positive)
    api_timeout_seconds: float = setting("CLOUD_API_TIMEOUT_SECONDS", 30.0, check=positive)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> CloudSettings:
        return load(cls, environ)


@dataclass(frozen=True)
class CelerySettings:
    """The Celery app's configuration: celery_config.py turns it into Celery's options. The
    workers module loads only this section and BeatSettings when imported (Flower and
    `celery inspect` need no database)."""

    redis_url: str = setting("REDIS_URL", "redis://127.0.0.1:6379/0")
    broker_url: str = setting("CELERY_BROKER_URL", "")  # empty: REDIS_URL
    # Redis is required whatever the broker; Celery has no backend for amqp:// URLs.
    result_backend: str = setting("CELERY_RESULT_BACKEND", "")  # empty: REDIS_URL
    task_soft_time_limit: int = setting("CELERY_TASK_SOFT_TIME_LIMIT", 300, check=at_least_one)
    task_time_limit: int = setting("CELERY_TASK_TIME_LIMIT", 360, check=at_least_one)
    visibility_timeout: int = setting("CELERY_VISIBILITY_TIMEOUT", 3600, check=at_least_one)
    max_countdown_seconds: float = setting(
        "CELERY_MAX_COUNTDOWN_SECONDS", 900.0, check=at_least_zero
    )
    send_sent_event: bool = setting("CELERY_SEND_SENT_EVENT", False)
    worker_nice: int = setting("WORKER_NICE", 10)  # CPU priority of workers; 0: unchanged

    def __post_init__(self) -> None:
        object.__setattr__(self, "broker_url", self.broker_url or self.redis_url)
        object.__setattr__(self, "result_backend", self.result_backend or self.redis_url)

    @property
    def max_countdown(self) -> float:
        """The longest retry countdown a worker holds (celery_config.py says why): never so
        long that a held message outlives Redis's visibility timeout."""
        held = max(0.0, self.visibility_timeout - self.task_time_limit - 60)
        return min(self.max_countdown_seconds, held)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> CelerySettings:
        return load(cls, environ)


@dataclass(frozen=True)
class BeatSettings:
    """Celery beat: the sweepers' periods (seconds) and the leader lease."""

    reconcile_interval_seconds: float = setting("RECONCILE_INTERVAL_SECONDS", 60.0, check=positive)
    health_check_interval_seconds: float = setting(
        "HEALTH_CHECK_INTERVAL_SECONDS", 60.0, check=positive
    )
    expiry_interval_seconds: float = setting("EXPIRY_INTERVAL_SECONDS", 300.0, check=positive)
    order_reconcile_interval_seconds: float = setting(
        "ORDER_RECONCILE_INTERVAL_SECONDS", 300.0, check=positive
    )
    cloud_sweep_interval_seconds: float = setting(
        "CLOUD_SWEEP_INTERVAL_SECONDS", 60.0, check=positive
    )
    leader_ttl_seconds: float = setting("BEAT_LEADER_TTL_SECONDS", 30.0, check=positive)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> BeatSettings:
        return load(cls, environ)


PAYMENT_VARIABLE_PREFIXES = ("STRIPE_", "WECHAT_", "ALIPAY_")


def _log_format(value: str) -> str | None:
    return None if value in ("json", "text") else "must be json or text"


TOKEN_LIFETIME = timedelta(days=7)


def _duration(_name: str, raw: str) -> timedelta:
    return timedelta(seconds=_parse(_name, raw, int))


@dataclass(frozen=True)
class LogSettings:
    """Log lines of every process (app/logging.py); the workers load it alone at start."""

    level: str = setting("LOG_LEVEL", "INFO", parse=lambda _n, r: r.upper())
    # json: one JSON object per line; text: readable lines. Empty: text in development.
    format: str = setting("LOG_FORMAT", "", check=_log_format, parse=lambda _n, r: r.lower())

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> LogSettings:
        environ = environment() if environ is None else environ
        mode = (_raw(environ, "VIBEBOX_ENV") or "development").lower()
        return load(
            cls,
            environ,
            **(
                {}
                if _raw(environ, "LOG_FORMAT")
                else {"format": "text" if mode == "development" else "json"}
            ),
        )


@dataclass(frozen=True)
class Settings:
    """Every setting of every process, read from the environment once (``from_env``).

    Sections: ``provisioning``, ``limits``, ``cloud``, ``regions``, ``celery`` (the Celery
    app, also loaded alone by the workers at import), ``beat``, ``web`` (gunicorn), and the
    payment providers' own variables (``payment_variables``, parsed by each provider).
    Fields declared with :func:`setting` name their variable and default once; the rest
    (secrets, URLs, the environment's mode) are derived in ``from_env``."""

    env: str
    database_url: str
    redis_url: str
    secret_key: str
    jwt_secret_key: str
    encryption_key: bytes
    jwt_access_expires: timedelta = setting(  # noqa: RUF009 - a dataclass field
        "JWT_ACCESS_TOKEN_EXPIRES_SECONDS", TOKEN_LIFETIME, parse=_duration
    )
    jwt_cookie_secure: bool = setting("JWT_COOKIE_SECURE", False)  # production: True
    ratelimit_default: str = setting("RATELIMIT_DEFAULT", "100 per minute")
    ratelimit_auth: str = setting("RATELIMIT_AUTH", "10 per minute")
    ratelimit_enabled: bool = setting("RATELIMIT_ENABLED", True)
    bcrypt_rounds: int = setting("BCRYPT_ROUNDS", 12, check=at_least_one)
    happy_server_url: str = setting("HAPPY_SERVER_URL", "https://api.cluster-fluster.com")
    happy_web_url: str = setting("HAPPY_WEB_URL", "https://app.happy.engineering")
    log: LogSettings = field(default_factory=lambda: LogSettings())
    provisioning: ProvisioningSettings = field(default_factory=ProvisioningSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    cloud: CloudSettings = field(default_factory=CloudSettings)
    celery: CelerySettings = field(default_factory=CelerySettings)
    beat: BeatSettings = field(default_factory=BeatSettings)
    web: WebSettings = field(default_factory=WebSettings)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    payment_providers: tuple[str, ...] = field(
        default=(), metadata={"extra_env": ("PAYMENT_PROVIDERS",)}
    )
    # STRIPE_*, WECHAT_*, ALIPAY_* as set: each provider parses its own (README "Payments")
    payment_variables: tuple[tuple[str, str], ...] = ()
    public_base_url: str = field(
        default="http://127.0.0.1:5000", metadata={"extra_env": ("PUBLIC_BASE_URL",)}
    )
    checkout_return_url: str = field(
        default="http://127.0.0.1:5000/", metadata={"extra_env": ("CHECKOUT_RETURN_URL",)}
    )
    order_reconcile_after_seconds: float = setting(
        "ORDER_RECONCILE_AFTER_SECONDS", 600.0, check=positive
    )
    # A recorded payment event not applied this long is re-enqueued by the reconciler.
    payment_event_resend_after_seconds: float = setting(
        "PAYMENT_EVENT_RESEND_AFTER_SECONDS", 60.0, check=positive
    )
    order_expiry_seconds: float = setting("ORDER_EXPIRY_SECONDS", 86400.0, check=positive)
    subscription_grace_seconds: float = setting(
        "SUBSCRIPTION_GRACE_SECONDS", 3 * 86400.0, check=at_least_zero
    )
    health_unhealthy_after: int = setting("HEALTH_UNHEALTHY_AFTER", 3, check=at_least_one)
    health_probe_timeout_seconds: float = setting(
        "HEALTH_PROBE_TIMEOUT_SECONDS", 10.0, check=positive
    )
    trusted_proxies: int = setting("TRUSTED_PROXIES", 0, check=at_least_zero)
    # Per-account login throttling (app/services/login_throttle.py).
    login_free_failures: int = setting("LOGIN_FREE_FAILURES", 5, check=at_least_zero)
    login_delay_base_seconds: float = setting("LOGIN_DELAY_BASE_SECONDS", 1.0, check=positive)
    login_delay_max_seconds: float = setting("LOGIN_DELAY_MAX_SECONDS", 900.0)
    login_failure_reset_seconds: float = setting("LOGIN_FAILURE_RESET_SECONDS", 3600.0)
    # Bearer token for /metrics and /readyz?workers=1
    metrics_token: str | None = setting("METRICS_TOKEN", None)
    metrics_ratelimit: str = setting("METRICS_RATELIMIT", "60 per minute")
    regions: RegionSettings = field(default_factory=RegionSettings)
    # Live boxes (not terminating/terminated) one user may have; a plan may set its own.
    # 0: no limit. Pending checkouts count for quota_pending_order_seconds.
    max_live_boxes_per_user: int = setting("MAX_LIVE_BOXES_PER_USER", 3, check=at_least_zero)
    quota_pending_order_seconds: float = setting(
        "QUOTA_PENDING_ORDER_SECONDS", 3600.0, check=at_least_zero
    )
    # Status polls (GET /api/vibeboxes[/<id>], GET /api/orders/<id>) have their own limit.
    status_ratelimit: str = setting("STATUS_RATELIMIT", "600 per minute")
    long_poll_recheck_seconds: float = setting("LONG_POLL_RECHECK_SECONDS", 5.0, check=positive)
    flower: FlowerSettings = field(default_factory=FlowerSettings)

    @property
    def flower_url(self) -> str | None:
        """Where operators open Flower (FLOWER_URL; in development, make run's address)."""
        return self.flower.link(self.env)

    def happy_url_for(self, region: str | None) -> str:
        """The Happy server of ``region``: its HAPPY_SERVER_URLS entry, else HAPPY_SERVER_URL."""
        return self.regions.configured_happy_url(region) or self.happy_server_url

    def happy_realm(self, region: str | None) -> str | None:
        """None when ``region`` uses the default Happy server (HAPPY_SERVER_URL), else its
        URL: where a user's Happy token for that region is kept (one per Happy server)."""
        url = self.happy_url_for(region)
        return None if url == self.happy_server_url else url

    @property
    def web_max_waiters(self) -> int:
        """Long polls one web process holds at once (WEB_MAX_WAITERS)."""
        return int(self.web.max_waiters or 0)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def payment_env(self) -> dict[str, str]:
        return dict(self.payment_variables)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> Settings:
        environ = environment() if environ is None else environ
        env = (_raw(environ, "VIBEBOX_ENV") or "development").lower()
        if env not in {"development", "production", "testing"}:
            raise ConfigError("VIBEBOX_ENV must be development, production or testing")
        production = env == "production"
        if production:
            missing = [n for n in PRODUCTION_SECRETS if _raw(environ, n) is None]
            if missing:
                raise ConfigError(f"{', '.join(missing)} required when VIBEBOX_ENV=production")

        def secret(name: str, dev_default: str) -> str:
            return _raw(environ, name) or dev_default

        database_url = _raw(environ, "DATABASE_URL")
        redis_url = _raw(environ, "REDIS_URL")
        if database_url is None:
            raise ConfigError(
                "DATABASE_URL is not set; start the system with `make run` (embedded "
                "PostgreSQL) or point DATABASE_URL at a PostgreSQL server"
            )
        if redis_url is None:
            raise ConfigError(
                "REDIS_URL is not set; start the system with `make run` (embedded Redis) "
                "or point REDIS_URL at a Redis server"
            )
        key_b64 = secret("ENCRYPTION_KEY", DEV_ENCRYPTION_KEY)
        encryption_key = _decode_key(key_b64)
        if encryption_key is None:
            raise ConfigError(
                "ENCRYPTION_KEY must be standard base64 of 32 bytes; generate one with: "
                + GENERATE_ENCRYPTION_KEY
            )
        if len(encryption_key) != 32:
            raise ConfigError(
                f"ENCRYPTION_KEY must decode to exactly 32 bytes (AES-256), got "
                f"{len(encryption_key)}; generate one with: {GENERATE_ENCRYPTION_KEY}"
            )
        secret_key = secret("SECRET_KEY", DEV_SECRET)
        jwt_secret_key = secret("JWT_SECRET_KEY", DEV_JWT_SECRET)
        if production:
            problems = production_secret_problems(
                secret_key, jwt_secret_key, key_b64, encryption_key
            )
            if problems:
                raise ConfigError(
                    "refusing to start with VIBEBOX_ENV=production: " + "; ".join(problems)
                )
        default_base = served_base_url(_raw(environ, "HOST"), _raw(environ, "PORT"))
        public_base_url = (_raw(environ, "PUBLIC_BASE_URL") or default_base).rstrip("/")
        derived: dict[str, Any] = {
            "jwt_cookie_secure": production,  # unless JWT_COOKIE_SECURE says otherwise
        }
        settings = load(
            cls,
            environ,
            env=env,
            database_url=normalize_database_url(database_url),
            redis_url=redis_url,
            secret_key=secret_key,
            jwt_secret_key=jwt_secret_key,
            encryption_key=encryption_key,
            provisioning=load(ProvisioningSettings, environ),
            limits=load(LimitSettings, environ),
            cloud=load(CloudSettings, environ),
            celery=load(CelerySettings, environ),
            beat=load(BeatSettings, environ),
            web=load(WebSettings, environ),
            bootstrap=load(BootstrapSettings, environ),
            log=LogSettings.from_env(environ),
            regions=RegionSettings.from_env(environ),
            payment_providers=_providers(environ, env),
            payment_variables=tuple(
                sorted(
                    (k, v)
                    for k, v in environ.items()
                    if k.startswith(PAYMENT_VARIABLE_PREFIXES) and v.strip()
                )
            ),
            public_base_url=public_base_url,
            checkout_return_url=_raw(environ, "CHECKOUT_RETURN_URL") or public_base_url + "/",
            flower=load(FlowerSettings, environ),
            **{k: v for k, v in derived.items() if _raw(environ, _variable(cls, k)) is None},
        )
        if settings.login_delay_base_seconds > settings.login_delay_max_seconds:
            raise ConfigError("LOGIN_DELAY_BASE_SECONDS must be at most LOGIN_DELAY_MAX_SECONDS")
        if settings.login_failure_reset_seconds < settings.login_delay_max_seconds:
            raise ConfigError(
                "LOGIN_FAILURE_RESET_SECONDS must be at least LOGIN_DELAY_MAX_SECONDS"
            )
        return settings

    def flask_config(self) -> dict[str, Any]:
        """The subset Flask and its extensions read from ``app.config``."""
        from app.extensions import redis_client_options

        return {
            "SECRET_KEY": self.secret_key,
            "TESTING": self.env == "testing",
            "MAX_CONTENT_LENGTH": self.limits.max_content_length,
            "VIBEBOX_SETTINGS": self,
            # flask-smorest / OpenAPI
            "API_TITLE": "VibeBox API",
            "API_VERSION": "v1",
            "OPENAPI_VERSION": "3.0.3",
            "OPENAPI_URL_PREFIX": "/",
            "OPENAPI_JSON_PATH": "openapi.json",
            "OPENAPI_SWAGGER_UI_PATH": "/docs",
            "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",
            "API_SPEC_OPTIONS": {
                "info": {"description": "VibeBox backend: plans, checkout, boxes, admin."},
                "components": {
                    "securitySchemes": {
                        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                    }
                },
            },
            # flask-jwt-extended: bearer header for mobile, HTTP-only cookie + CSRF for web
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "JWT_TOKEN_LOCATION": ["headers", "cookies"],
            "JWT_ACCESS_TOKEN_EXPIRES": self.jwt_access_expires,
            "JWT_COOKIE_SECURE": self.jwt_cookie_secure,
            "JWT_COOKIE_SAMESITE": "Lax",
            "JWT_COOKIE_CSRF_PROTECT": True,
            "JWT_CSRF_IN_COOKIES": True,
            "JWT_SESSION_COOKIE": False,
            # flask-limiter on Redis
            "RATELIMIT_STORAGE_URI": self.redis_url,
            "RATELIMIT_DEFAULT": self.ratelimit_default,
            "RATELIMIT_ENABLED": self.ratelimit_enabled,
            "RATELIMIT_HEADERS_ENABLED": True,
            "RATELIMIT_KEY_PREFIX": "vibebox-rl",
            # Redis down: the limits fail open to per-process memory (logged by flask-limiter
            # when it switches and when Redis is back); see app/outage.py.
            "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
            "RATELIMIT_SWALLOW_ERRORS": True,
            "RATELIMIT_STORAGE_OPTIONS": redis_client_options(),
        }
