"""What the API does while Redis is down (README: Security -> Redis outages).

Redis carries the Celery queue, the rate limits and the token blocklist; PostgreSQL is the
system of record. While Redis is unreachable:

- Routes that need only PostgreSQL keep answering: the plans, the probes, payment webhooks and
  the owner's status polls (``STATUS_READS``).
- The rate limiter fails open to per-process in-memory limits (flask-limiter's in-memory
  fallback, configured in ``Settings.flask_config``); it logs when it switches and when Redis
  is back.
- Token revocation fails closed: an authenticated request whose blocklist check cannot be
  made is ``503 service_unavailable`` - except the read-only status polls, which answer
  without the credential-bearing ``connectionInfo`` (see ``blocklist_unreachable``).
- Login and registration are 503 (``redis_required``): their brute-force limit lives in Redis,
  and the session they would issue could not be revoked until Redis is back. Logout is 503
  and the token stays valid: the client must not believe it is logged out.
- Work committed to PostgreSQL whose Celery message cannot be published (a webhook's boxes,
  a control action) is left to the reconciler: ``app.services.jobs`` publishes after commit
  and logs, never raises, when the broker is down.
- Anything else that reaches Redis answers 503 with ``Retry-After`` (``app.api.errors``),
  never 500.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import redis
from flask import g, request
from kombu.exceptions import OperationalError as BrokerOperationalError

from app.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

RETRY_AFTER_SECONDS = 5

#: Redis could not be reached (refused, timed out, closed, still loading its data set).
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
#: Publishing a Celery message failed (kombu wraps the transport's errors).
BROKER_ERRORS: tuple[type[BaseException], ...] = (BrokerOperationalError, *REDIS_ERRORS)

#: Read-only polls of the owner's own state that keep answering when the token blocklist
#: cannot be read (Flask endpoint names; GET/HEAD only).
STATUS_READS = frozenset({"vibeboxes.VibeBoxes", "vibeboxes.VibeBoxDetail", "orders.OrderDetail"})

_UNVERIFIED = "vibebox_revocation_unverified"
LOG_EVERY_SECONDS = 10.0
_log_state = {"last": 0.0, "suppressed": 0}
_log_lock = threading.Lock()


def warn_throttled(message: str, *args: Any) -> None:
    """A warning per outage event, at most one line per LOG_EVERY_SECONDS per process: every
    polling client hits this while Redis is down, and the log must not become the next
    outage."""
    now = time.monotonic()
    with _log_lock:
        if now - _log_state["last"] < LOG_EVERY_SECONDS:
            _log_state["suppressed"] += 1
            return
        suppressed, _log_state["suppressed"], _log_state["last"] = _log_state["suppressed"], 0, now
    if suppressed:
        message += " (and %d more since the last such line)"
        args = (*args, suppressed)
    log.warning(message, *args)


def unavailable(message: str) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"{message}; try again shortly", retry_after=RETRY_AFTER_SECONDS)


def blocklist_unreachable(exc: BaseException) -> bool:
    """The blocklist check failed: accept a status read (flagged), refuse everything else.

    Returns the "revoked?" answer for flask-jwt-extended, or raises 503.
    """
    if request.method in ("GET", "HEAD") and request.endpoint in STATUS_READS:
        setattr(g, _UNVERIFIED, True)
        warn_throttled(
            "token blocklist unreachable (%s); %s answered without credentials",
            type(exc).__name__,
            request.endpoint,
        )
        return False
    warn_throttled(
        "token blocklist unreachable (%s); %s %s refused",
        type(exc).__name__,
        request.method,
        request.path,
    )
    raise unavailable("Sessions cannot be verified right now") from exc


def revocation_unverified() -> bool:
    """True when this request's token was accepted without a blocklist check (outage)."""
    return bool(getattr(g, _UNVERIFIED, False))


def require_redis() -> None:
    """Raise 503 unless Redis answers a PING."""
    from app.extensions import get_redis

    try:
        get_redis().ping()
    except REDIS_ERRORS as exc:
        warn_throttled(
            "Redis unreachable (%s); %s %s refused",
            type(exc).__name__,
            request.method,
            request.path,
        )
        raise unavailable("Sessions cannot be started right now") from exc


def redis_required(fn: F) -> F:
    """View decorator: 503 with Retry-After while Redis is down (see ``require_redis``)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_redis()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
