"""Accounts: register, log in, log out, current session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app, jsonify
from flask.views import MethodView
from flask_jwt_extended import (
    create_access_token,
    current_user,
    get_jwt,
    jwt_required,
    set_access_cookies,
    unset_jwt_cookies,
)
from flask_smorest import Blueprint

from app import get_settings
from app.api.auth.schemas import (
    AuthResponseSchema,
    LoginRequestSchema,
    LogoutResponseSchema,
    RegisterRequestSchema,
    SessionResponseSchema,
)
from app.api.errors import error_response
from app.db import db_session
from app.extensions import limiter
from app.models import User
from app.outage import redis_required
from app.security import revoke_token
from app.services import accounts, login_throttle

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="User accounts")


def _auth_limit() -> str:
    return str(current_app.config["RATELIMIT_AUTH"])


def _session_response(user: User, status: int):
    """Token in the body (mobile: ``Authorization: Bearer``) and in an HTTP-only cookie (web)."""
    token = create_access_token(identity=user)
    expires = datetime.now(UTC) + get_settings().jwt_access_expires
    body = AuthResponseSchema().dump(
        {"user": user, "session": {"token": token, "expiresAt": expires}}
    )
    response = jsonify(body)
    response.status_code = status
    # The cookie lives exactly as long as the token in it (flask-jwt-extended's default
    # for a non-session cookie is a year).
    lifetime = int(get_settings().jwt_access_expires.total_seconds())
    set_access_cookies(response, token, max_age=lifetime)
    return response


@blp.route("/register")
class Register(MethodView):
    decorators = [limiter.limit(_auth_limit), redis_required]

    @blp.arguments(RegisterRequestSchema)
    @blp.response(201, AuthResponseSchema)
    @blp.alt_response(409, description="Email or username already taken")
    @blp.alt_response(503, description="Redis is down: no session can be started (Retry-After)")
    def post(self, data: dict[str, Any]):
        """Create an account and start a session"""
        user = accounts.register_user(
            db_session(),
            email=data["email"],
            username=data["username"],
            password=data["password"],
            bcrypt_rounds=get_settings().bcrypt_rounds,
        )
        db_session.commit()
        return _session_response(user, 201)


@blp.route("/login")
class Login(MethodView):
    decorators = [limiter.limit(_auth_limit), redis_required]

    @blp.arguments(LoginRequestSchema)
    @blp.response(200, AuthResponseSchema)
    @blp.alt_response(401, description="Invalid credentials")
    @blp.alt_response(
        429,
        description="Too many requests from this address, or too many failed logins for "
        "this account (`login_throttled`; wait `Retry-After` seconds)",
    )
    @blp.alt_response(503, description="Redis is down: no session can be started (Retry-After)")
    def post(self, data: dict[str, Any]):
        """Log in with username or email and password"""
        settings = get_settings()
        verdict = login_throttle.begin_attempt(settings, data["username"])
        if not verdict.allowed:
            # Refused without looking at the password: during the delay even the right one
            # is refused, else the delay would not slow a guesser down.
            return _throttled(verdict.retry_after_seconds)
        user = accounts.authenticate(
            db_session(),
            login=data["username"],
            password=data["password"],
            bcrypt_rounds=settings.bcrypt_rounds,
        )
        login_throttle.succeeded(settings, data["username"])
        return _session_response(user, 200)


def _throttled(retry_after: int):
    response = error_response(
        429,
        "login_throttled",
        f"Too many failed logins for this account; try again in {retry_after} s",
        extra={"retryAfter": retry_after},
    )
    # flask-limiter (headers on) then sets Retry-After to the later of this and the per-IP
    # window's reset; ``retryAfter`` in the body is the account's own delay.
    response.headers["Retry-After"] = str(retry_after)
    return response


@blp.route("/logout")
class Logout(MethodView):
    @jwt_required()
    @blp.response(200, LogoutResponseSchema)
    @blp.alt_response(503, description="Redis is down: the token is NOT revoked (Retry-After)")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self):
        """End the session: the token is revoked and the cookies cleared"""
        revoke_token(get_jwt())
        response = jsonify({"success": True})
        unset_jwt_cookies(response)
        return response


@blp.route("/session")
class CurrentSession(MethodView):
    @jwt_required(optional=True)
    @blp.response(200, SessionResponseSchema)
    @blp.doc(security=[{"bearerAuth": []}, {}])  # {}: anonymous is fine too
    def get(self):
        """The logged-in user, or null"""
        return {"user": current_user if get_jwt() else None}
