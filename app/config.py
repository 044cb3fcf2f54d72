"""Settings from the environment.

Every variable is documented in README.md and .env.example. In development and testing
secrets fall back to fixed, clearly-marked defaults; in production a missing, publicly known
or weak secret is a start-up error (README, Security), never a silent default.

Over 400 lines: every setting's parsing, default and validation message lives here, once for
all processes. (Still open, issue 14: one declarative settings object that also builds the
Celery configuration, in place of the section dataclasses and celery_config.py's own reads.)
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

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


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    return raw.lower() in {"1", "true", "yes", "on"}


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


def _providers(env: str) -> tuple[str, ...]:
    raw = _env("PAYMENT_PROVIDERS")
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


def _login_throttle() -> dict[str, Any]:
    free = _int("LOGIN_FREE_FAILURES", 5)
    base = _float("LOGIN_DELAY_BASE_SECONDS", 1.0)
    cap = _float("LOGIN_DELAY_MAX_SECONDS", 900.0)
    reset = _float("LOGIN_FAILURE_RESET_SECONDS", 3600.0)
    if free < 0:
        raise ConfigError(f"LOGIN_FREE_FAILURES must be 0 or more, got {free}")
    if not (0 < base <= cap):
        raise ConfigError(
            "LOGIN_DELAY_BASE_SECONDS must be above 0 and at most LOGIN_DELAY_MAX_SECONDS"
        )
    if reset < cap:
        raise ConfigError("LOGIN_FAILURE_RESET_SECONDS must be at least LOGIN_DELAY_MAX_SECONDS")
    return {
        "login_free_failures": free,
        "login_delay_base_seconds": base,
        "login_delay_max_seconds": cap,
        "login_failure_reset_seconds": reset,
    }


@dataclass(frozen=True)
class ProvisioningSettings:
    """Retry budgets and timeouts of the provisioning chain and its reconciler."""

    max_attempts: int = 8  # per step, for transient faults
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    # Waiting for capacity is woken by the event (a server freed, added or made available
    # wakes the oldest waiting boxes it fits); this backoff is only the fallback.
    capacity_retry_max_seconds: float = 300.0
    max_server_moves: int = 3  # servers tried before the box fails
    stuck_after_seconds: float = 600.0  # a step with no progress this long is re-enqueued
    mark_running_timeout_seconds: float = 90.0
    # Detection polls the Happy server after 0.05 s, doubling up to the cap of 1 s: a daemon
    # that registers at once is seen within ~50 ms, a slow one costs one request a second.
    mark_running_first_poll_seconds: float = 0.05
    mark_running_poll_seconds: float = 1.0
    happy_timeout_seconds: float = 10.0
    ssh_connect_timeout_seconds: float = 10.0
    ssh_command_timeout_seconds: float = 60.0
    ssh_pool_max_idle_seconds: float = 10.0
    box_user_prefix: str = "vb-"  # + 12 hex of the box id: the box's Unix user
    daemon_max_restarts: int = 3  # automatic restarts of a crashed daemon per window
    daemon_restart_window_seconds: float = 3600.0
    daemon_restart_backoff_seconds: float = 30.0  # doubles with each restart in the window

    @classmethod
    def from_env(cls) -> ProvisioningSettings:
        prefix = _env("BOX_USER_PREFIX", cls.box_user_prefix) or cls.box_user_prefix
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,15}", prefix):
            raise ConfigError(
                f"BOX_USER_PREFIX must be 1-16 of a-z, 0-9, '_' and '-' starting with a "
                f"letter or '_', got {prefix!r}"
            )
        return cls(
            max_attempts=_int("PROVISION_MAX_ATTEMPTS", cls.max_attempts),
            retry_base_seconds=_float("PROVISION_RETRY_BASE_SECONDS", cls.retry_base_seconds),
            retry_max_seconds=_float("PROVISION_RETRY_MAX_SECONDS", cls.retry_max_seconds),
            capacity_retry_max_seconds=_float(
                "CAPACITY_RETRY_MAX_SECONDS", cls.capacity_retry_max_seconds
            ),
            max_server_moves=_int("PROVISION_MAX_SERVER_MOVES", cls.max_server_moves),
            stuck_after_seconds=_float("STUCK_STEP_SECONDS", cls.stuck_after_seconds),
            mark_running_timeout_seconds=_float(
                "MARK_RUNNING_TIMEOUT_SECONDS", cls.mark_running_timeout_seconds
            ),
            mark_running_first_poll_seconds=_float(
                "MARK_RUNNING_FIRST_POLL_SECONDS", cls.mark_running_first_poll_seconds
            ),
            mark_running_poll_seconds=_float(
                "MARK_RUNNING_POLL_SECONDS", cls.mark_running_poll_seconds
            ),
            happy_timeout_seconds=_float("HAPPY_TIMEOUT_SECONDS", cls.happy_timeout_seconds),
            ssh_connect_timeout_seconds=_float(
                "SSH_CONNECT_TIMEOUT_SECONDS", cls.ssh_connect_timeout_seconds
            ),
            ssh_command_timeout_seconds=_float(
                "SSH_COMMAND_TIMEOUT_SECONDS", cls.ssh_command_timeout_seconds
            ),
            ssh_pool_max_idle_seconds=_float(
                "SSH_POOL_MAX_IDLE_SECONDS", cls.ssh_pool_max_idle_seconds
            ),
            box_user_prefix=prefix,
            daemon_max_restarts=_int("DAEMON_MAX_RESTARTS", cls.daemon_max_restarts),
            daemon_restart_window_seconds=_float(
                "DAEMON_RESTART_WINDOW_SECONDS", cls.daemon_restart_window_seconds
            ),
            daemon_restart_backoff_seconds=_float(
                "DAEMON_RESTART_BACKOFF_SECONDS", cls.daemon_restart_backoff_seconds
            ),
        )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(name: str) -> tuple[IPNetwork, ...]:
    """Comma- or space-separated CIDRs (a bare address is a /32 or /128); empty: none."""
    raw = _env(name, "") or ""
    networks = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an IP network (CIDR)") from None
    return tuple(networks)


def _positive(name: str, default: int) -> int:
    value = _int(name, default)
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return value


def _non_negative(name: str, default: int) -> int:
    value = _int(name, default)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    return value


def _positive_float(name: str, default: float) -> float:
    value = _float(name, default)
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")
    return value


DEFAULT_WEB_THREADS = 16


def web_threads() -> int:
    """WEB_THREADS: threads per gunicorn worker (gthread); read by app/gunicorn_config.py
    too, which must not need the rest of the settings."""
    return _positive("WEB_THREADS", DEFAULT_WEB_THREADS)


def web_max_waiters() -> int:
    """WEB_MAX_WAITERS: long polls one web process holds at once (default half of
    WEB_THREADS); fewer than WEB_THREADS, so waiting requests never take every thread."""
    threads = web_threads()
    value = _int("WEB_MAX_WAITERS", max(threads // 2, 1))
    if value < 0 or value >= threads:
        raise ConfigError(
            f"WEB_MAX_WAITERS must be from 0 to WEB_THREADS - 1 ({threads - 1}), got {value}: "
            "long polls must leave threads for other requests"
        )
    return value


def _flower_url(env: str) -> str | None:
    """FLOWER_URL, else (development) Flower's address under `make run`."""
    url = _env("FLOWER_URL")
    if url is not None:
        return url.rstrip("/") + "/"
    if env != "development":
        return None
    host = _env("HOST", "127.0.0.1") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # noqa: S104 - display only
        host = "127.0.0.1"
    return f"http://{host}:{_env('FLOWER_PORT', '5555')}/"


@dataclass(frozen=True)
class LimitSettings:
    """What a request may carry, and where pool servers may be (README "Security")."""

    max_content_length: int = 1024 * 1024  # any request body, bytes
    webhook_max_bytes: int = 256 * 1024  # payment webhook bodies, bytes
    # Networks a pool server's addresses must all be in; empty: any address.
    pool_allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_env(cls) -> LimitSettings:
        return cls(
            max_content_length=_positive("MAX_CONTENT_LENGTH", cls.max_content_length),
            webhook_max_bytes=_positive("WEBHOOK_MAX_BYTES", cls.webhook_max_bytes),
            pool_allowed_networks=_networks("POOL_ALLOWED_NETWORKS"),
        )


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

    regions: tuple[str, ...] = ()
    default_region: str | None = None
    # (region, Happy server URL) pairs; a region without one uses HAPPY_SERVER_URL.
    happy_server_urls: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.regions)

    @classmethod
    def from_env(cls) -> RegionSettings:
        raw = _env("REGIONS", "") or ""
        regions: list[str] = []
        for item in raw.replace(",", " ").split():
            region = _region_name("REGIONS", item.strip().lower())
            if region not in regions:
                regions.append(region)
        default = _env("DEFAULT_REGION")
        if default is not None:
            default = default.lower()
            if not regions:
                raise ConfigError("DEFAULT_REGION is set but REGIONS is not")
            if default not in regions:
                raise ConfigError(f"DEFAULT_REGION {default!r} is not one of REGIONS {regions}")
        elif regions:
            default = regions[0]
        urls: list[tuple[str, str]] = []
        for item in (_env("HAPPY_SERVER_URLS", "") or "").replace(",", " ").split():
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


@dataclass(frozen=True)
class BootstrapSettings:
    """How ``vibebox pool bootstrap`` (and cloud-init user-data) prepare a host (README
    "Bootstrapping a server")."""

    happy_coder_package: str = "happy-coder@0.13.0"  # npm spec: name@version or a tarball
    npm_prefix: str | None = None  # None: npm's global prefix (`npm prefix -g`)
    node_install_command: str = (
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm"
    )
    # Where HAPPY_SERVER_URL (and PATH, when happy's bin dir is not on it) are set for the
    # login's non-interactive SSH sessions: pam_env (/etc/environment, read by sshd through
    # PAM on Debian/Ubuntu, no reload) or sshd_setenv (a SetEnv line in an sshd config file,
    # then the reload command).
    env_method: str = "pam_env"
    env_file: str = DEFAULT_ENV_FILES["pam_env"]
    sshd_reload_command: str = (
        "sshd -t && (systemctl reload ssh || systemctl reload sshd || service ssh reload)"
    )
    install_timeout_seconds: float = 900.0

    @classmethod
    def from_env(cls) -> BootstrapSettings:
        method = _env("BOOTSTRAP_ENV_METHOD", cls.env_method) or cls.env_method
        if method not in BOOTSTRAP_ENV_METHODS:
            raise ConfigError(
                f"BOOTSTRAP_ENV_METHOD must be one of {', '.join(BOOTSTRAP_ENV_METHODS)}"
            )
        return cls(
            happy_coder_package=_env("HAPPY_CODER_PACKAGE") or cls.happy_coder_package,
            npm_prefix=_env("HAPPY_NPM_PREFIX") or None,
            node_install_command=_env("BOOTSTRAP_NODE_INSTALL_COMMAND") or cls.node_install_command,
            env_method=method,
            env_file=_env("BOOTSTRAP_ENV_FILE") or DEFAULT_ENV_FILES[method],
            sshd_reload_command=_env("BOOTSTRAP_SSHD_RELOAD_COMMAND") or cls.sshd_reload_command,
            install_timeout_seconds=_float(
                "BOOTSTRAP_INSTALL_TIMEOUT_SECONDS", cls.install_timeout_seconds
            ),
        )


@dataclass(frozen=True)
class CloudSettings:
    """The capacity service (README "Cloud capacity")."""

    orphan_policy: str = "destroy"  # instances with our tag and no live server: destroy|report
    sweep_interval_seconds: float = 60.0
    boot_timeout_seconds: float = 600.0  # a node not reachable by then is destroyed, replaced
    poll_seconds: float = 5.0
    api_timeout_seconds: float = 30.0

    @classmethod
    def from_env(cls) -> CloudSettings:
        policy = (_env("CLOUD_ORPHAN_POLICY", cls.orphan_policy) or cls.orphan_policy).lower()
        if policy not in ("destroy", "report"):
            raise ConfigError(f"CLOUD_ORPHAN_POLICY must be destroy or report, got {policy!r}")
        return cls(
            orphan_policy=policy,
            sweep_interval_seconds=_float(
                "CLOUD_SWEEP_INTERVAL_SECONDS", cls.sweep_interval_seconds
            ),
            boot_timeout_seconds=_float("CLOUD_BOOT_TIMEOUT_SECONDS", cls.boot_timeout_seconds),
            poll_seconds=_float("CLOUD_POLL_SECONDS", cls.poll_seconds),
            api_timeout_seconds=_float("CLOUD_API_TIMEOUT_SECONDS", cls.api_timeout_seconds),
        )


@dataclass(frozen=True)
class Settings:
    env: str
    database_url: str
    redis_url: str
    celery_broker_url: str
    celery_result_backend: str
    secret_key: str
    jwt_secret_key: str
    encryption_key: bytes
    jwt_access_expires: timedelta
    jwt_cookie_secure: bool
    ratelimit_default: str
    ratelimit_auth: str
    ratelimit_enabled: bool
    bcrypt_rounds: int
    happy_server_url: str
    happy_web_url: str
    log_level: str
    provisioning: ProvisioningSettings = field(default_factory=lambda: ProvisioningSettings())
    limits: LimitSettings = field(default_factory=lambda: LimitSettings())
    cloud: CloudSettings = field(default_factory=lambda: CloudSettings())
    payment_providers: tuple[str, ...] = ()
    public_base_url: str = "http://127.0.0.1:5000"
    checkout_return_url: str = "http://127.0.0.1:5000/"
    order_reconcile_after_seconds: float = 600.0
    # A recorded payment event not applied this long is re-enqueued by the reconciler.
    payment_event_resend_after_seconds: float = 60.0
    order_expiry_seconds: float = 86400.0
    subscription_grace_seconds: float = 3 * 86400.0
    health_unhealthy_after: int = 3
    health_probe_timeout_seconds: float = 10.0
    trusted_proxies: int = 0
    # Per-account login throttling (app/services/login_throttle.py).
    login_free_failures: int = 5
    login_delay_base_seconds: float = 1.0
    login_delay_max_seconds: float = 900.0
    login_failure_reset_seconds: float = 3600.0
    metrics_token: str | None = None  # Bearer token for /metrics and /readyz?workers=1
    metrics_ratelimit: str = "60 per minute"
    regions: RegionSettings = field(default_factory=lambda: RegionSettings())
    # Live boxes (not terminating/terminated) one user may have; a plan may set its own.
    # 0: no limit. Pending checkouts count for quota_pending_order_seconds.
    max_live_boxes_per_user: int = 3
    quota_pending_order_seconds: float = 3600.0

    def happy_url_for(self, region: str | None) -> str:
        """The Happy server of ``region``: its HAPPY_SERVER_URLS entry, else HAPPY_SERVER_URL."""
        return self.regions.configured_happy_url(region) or self.happy_server_url

    def happy_realm(self, region: str | None) -> str | None:
        """None when ``region`` uses the default Happy server (HAPPY_SERVER_URL), else its
        URL: where a user's Happy token for that region is kept (one per Happy server)."""
        url = self.happy_url_for(region)
        return None if url == self.happy_server_url else url

    # Status polls (GET /api/vibeboxes[/<id>], GET /api/orders/<id>) have their own limit.
    status_ratelimit: str = "600 per minute"
    # Long polls (GET /api/vibeboxes/<id>?wait=N): per web process.
    web_max_waiters: int = 8
    long_poll_recheck_seconds: float = 5.0
    flower_url: str | None = None

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls) -> Settings:
        env = (_env("VIBEBOX_ENV", "development") or "development").lower()
        if env not in {"development", "production", "testing"}:
            raise ConfigError("VIBEBOX_ENV must be development, production or testing")
        production = env == "production"
        if production:
            missing = [n for n in PRODUCTION_SECRETS if _env(n) is None]
            if missing:
                raise ConfigError(f"{', '.join(missing)} required when VIBEBOX_ENV=production")

        def secret(name: str, dev_default: str) -> str:
            value = _env(name)
            if value is None:
                if production:
                    raise ConfigError(f"{name} is required when VIBEBOX_ENV=production")
                return dev_default
            return value

        database_url = _env("DATABASE_URL")
        redis_url = _env("REDIS_URL")
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
        decoded = _decode_key(key_b64)
        if decoded is None:
            raise ConfigError(
                "ENCRYPTION_KEY must be standard base64 of 32 bytes; generate one with: "
                + GENERATE_ENCRYPTION_KEY
            )
        encryption_key = decoded
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

        broker = _env("CELERY_BROKER_URL", redis_url) or redis_url
        default_base = served_base_url(_env("HOST", "127.0.0.1"), _env("PORT", "5000"))
        public_base_url = (_env("PUBLIC_BASE_URL", default_base) or default_base).rstrip("/")
        return cls(
            env=env,
            database_url=normalize_database_url(database_url),
            redis_url=redis_url,
            celery_broker_url=broker,
            # Redis is required whatever the broker; Celery has no backend for amqp:// URLs.
            celery_result_backend=_env("CELERY_RESULT_BACKEND", redis_url) or redis_url,
            secret_key=secret_key,
            jwt_secret_key=jwt_secret_key,
            encryption_key=encryption_key,
            jwt_access_expires=timedelta(
                seconds=_int("JWT_ACCESS_TOKEN_EXPIRES_SECONDS", 7 * 24 * 3600)
            ),
            jwt_cookie_secure=_bool("JWT_COOKIE_SECURE", production),
            ratelimit_default=_env("RATELIMIT_DEFAULT", "100 per minute") or "100 per minute",
            ratelimit_auth=_env("RATELIMIT_AUTH", "10 per minute") or "10 per minute",
            ratelimit_enabled=_bool("RATELIMIT_ENABLED", True),
            bcrypt_rounds=_int("BCRYPT_ROUNDS", 12),
            happy_server_url=_env("HAPPY_SERVER_URL", "https://api.cluster-fluster.com")
            or "https://api.cluster-fluster.com",
            happy_web_url=_env("HAPPY_WEB_URL", "https://app.happy.engineering")
            or "https://app.happy.engineering",
            log_level=(_env("LOG_LEVEL", "INFO") or "INFO").upper(),
            provisioning=ProvisioningSettings.from_env(),
            limits=LimitSettings.from_env(),
            cloud=CloudSettings.from_env(),
            payment_providers=_providers(env),
            public_base_url=public_base_url,
            checkout_return_url=_env("CHECKOUT_RETURN_URL", public_base_url + "/")
            or public_base_url + "/",
            order_reconcile_after_seconds=_float("ORDER_RECONCILE_AFTER_SECONDS", 600.0),
            payment_event_resend_after_seconds=_float("PAYMENT_EVENT_RESEND_AFTER_SECONDS", 60.0),
            order_expiry_seconds=_float("ORDER_EXPIRY_SECONDS", 86400.0),
            subscription_grace_seconds=_float("SUBSCRIPTION_GRACE_SECONDS", 3 * 86400.0),
            health_unhealthy_after=_int("HEALTH_UNHEALTHY_AFTER", 3),
            health_probe_timeout_seconds=_float("HEALTH_PROBE_TIMEOUT_SECONDS", 10.0),
            trusted_proxies=_int("TRUSTED_PROXIES", 0),
            **_login_throttle(),
            metrics_token=_env("METRICS_TOKEN"),
            metrics_ratelimit=_env("METRICS_RATELIMIT", "60 per minute") or "60 per minute",
            regions=RegionSettings.from_env(),
            max_live_boxes_per_user=_non_negative("MAX_LIVE_BOXES_PER_USER", 3),
            quota_pending_order_seconds=_float("QUOTA_PENDING_ORDER_SECONDS", 3600.0),
            status_ratelimit=_env("STATUS_RATELIMIT", "600 per minute") or "600 per minute",
            web_max_waiters=web_max_waiters(),
            long_poll_recheck_seconds=_positive_float("LONG_POLL_RECHECK_SECONDS", 5.0),
            flower_url=_flower_url(env),
        )

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
