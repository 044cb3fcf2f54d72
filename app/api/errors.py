"""One JSON error shape for every 4xx/5xx: ``{"code", "message", "errors"?}``."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError as BrokerOperationalError
from werkzeug.exceptions import HTTPException

from app import outage
from app.errors import VibeBoxError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    422: "validation_error",
    428: "precondition_required",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    errors: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {**(extra or {}), "code": code, "message": message}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    return response


def _field_errors(exc: HTTPException) -> dict[str, Any] | None:
    """webargs puts ``{location: {field: [msgs]}}`` in ``exc.data["messages"]``; flatten it."""
    messages = (getattr(exc, "data", None) or {}).get("messages")
    if not isinstance(messages, dict):
        return None
    flat: dict[str, Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            flat.update(fields)
        else:
            flat[location] = fields
    return flat or None


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(VibeBoxError)
    def _domain(exc: VibeBoxError) -> Response:
        response = error_response(exc.status_code, exc.code, exc.message, exc.errors, exc.extra)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        response.headers.update(getattr(exc, "headers", None) or {})
        return response

    # Redis (rate limits, token blocklist, Celery broker) unreachable where no policy in
    # app.outage caught it: the request cannot be served now, later it can. Never a 500.
    @app.errorhandler(BrokerOperationalError)
    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _backend_down(exc: Exception) -> Response:
        outage.warn_throttled(
            "Redis unreachable during %s %s: %r", request.method, request.path, exc
        )
        return _domain(outage.unavailable("The service is temporarily unavailable"))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "error")
        errors = _field_errors(exc)
        if status == 422:
            message = "The request has invalid fields"
        elif status == 400 and errors:
            message = "The request body is not valid JSON"
            code = "invalid_json"
        elif status == 429:
            message = f"Too many requests: limit {exc.description}"
        else:
            message = exc.description or code
        response = error_response(status, code, message, errors)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        retry_after = getattr(exc, "retry_after", None)
        if status == 429 and retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal server error")
