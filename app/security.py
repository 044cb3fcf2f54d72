"""JWT callbacks (identity, blocklist, error shapes) and the admin guard."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

from flask import jsonify, request
from flask_jwt_extended import JWTManager, current_user, verify_jwt_in_request

from app import outage
from app.db import db_session
from app.errors import MetricsTokenRequiredError, PermissionDeniedError
from app.extensions import get_redis
from app.models import User

BLOCKLIST_PREFIX = "vibebox:jwt:revoked:"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TokenIdentity:
    """``current_user`` of an owner's read-only status poll: the token's subject, no row.

    Those polls (``outage.STATUS_READS``) need only the id to filter by owner, so they skip
    the per-request user SELECT. Access still ends with the session: logout revokes the
    token (blocklist, checked on every request) and tokens expire; a user row cannot be deleted
    while boxes or orders reference it, so a gone user's poll finds nothing (404). Every other
    route loads the user and answers 401 when it no longer exists.
    """

    id: uuid.UUID
    is_admin: bool = False  # never trusted: admin routes load the user


def revoke_token(jwt_payload: dict[str, Any]) -> None:
    """Put a token's jti on the Redis blocklist until the token would expire anyway.

    Redis down: 503, and the token stays valid - never an answer that looks like a logout.
    """
    ttl = int(jwt_payload["exp"] - datetime.now(UTC).timestamp()) + 1
    if ttl > 0:
        try:
            get_redis().set(BLOCKLIST_PREFIX + jwt_payload["jti"], b"1", ex=ttl)
        except outage.REDIS_ERRORS as exc:
            raise outage.unavailable("Logging out is not possible right now") from exc


def _error(status: int, code: str, message: str):
    response = jsonify({"code": code, "message": message})
    response.status_code = status
    return response


def register_jwt_callbacks(jwt: JWTManager) -> None:
    @jwt.user_identity_loader
    def _identity(user: User | str) -> str:
        return str(user.id) if isinstance(user, User) else str(user)

    @jwt.user_lookup_loader
    def _lookup(_header: dict[str, Any], payload: dict[str, Any]) -> User | TokenIdentity | None:
        try:
            user_id = uuid.UUID(payload["sub"])
        except (KeyError, ValueError):
            return None
        if request.method in ("GET", "HEAD") and request.endpoint in outage.STATUS_READS:
            return TokenIdentity(user_id)
        return db_session.get(User, user_id)

    @jwt.token_in_blocklist_loader
    def _revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
        try:
            return bool(get_redis().exists(BLOCKLIST_PREFIX + payload["jti"]))
        except outage.REDIS_ERRORS as exc:
            # Fails closed (503) except for the owner's read-only status polls.
            return outage.blocklist_unreachable(exc)

    @jwt.unauthorized_loader
    def _missing(reason: str):
        if "CSRF" in reason:
            return _error(401, "csrf_failed", reason)
        return _error(401, "unauthorized", "Authentication required")

    @jwt.invalid_token_loader
    def _invalid(reason: str):
        return _error(401, "invalid_token", "The session token is invalid")

    @jwt.expired_token_loader
    def _expired(_h: dict[str, Any], _p: dict[str, Any]):
        return _error(401, "token_expired", "The session has expired; log in again")

    @jwt.revoked_token_loader
    def _revoked_answer(_h: dict[str, Any], _p: dict[str, Any]):
        return _error(401, "token_revoked", "The session was logged out; log in again")

    @jwt.user_lookup_error_loader
    def _gone(_h: dict[str, Any], _p: dict[str, Any]):
        return _error(401, "invalid_token", "The session's user no longer exists")


def require_metrics_token() -> None:
    """Guard of ``/metrics`` and ``/readyz?workers=1``: ``Authorization: Bearer METRICS_TOKEN``.

    Without METRICS_TOKEN only development serves them (to anyone); elsewhere they are
    closed (403 ``metrics_disabled``) until a token is configured.
    """
    from app import get_settings

    settings = get_settings()
    expected = settings.metrics_token
    if expected is None:
        if settings.env == "development":
            return
        raise PermissionDeniedError(
            "Set METRICS_TOKEN to serve metrics and worker probes", code="metrics_disabled"
        )
    scheme, _, presented = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    ):
        raise MetricsTokenRequiredError()


def require_admin() -> None:
    """``before_request`` guard for admin blueprints: a valid token of an admin user."""
    if request.method == "OPTIONS":
        return  # CORS preflight / method discovery: flask-jwt-extended exempts it too
    verify_jwt_in_request()
    if not current_user.is_admin:
        raise PermissionDeniedError("Administrator access required", code="admin_required")


def admin_required(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_admin()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
