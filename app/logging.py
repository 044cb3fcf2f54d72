"""Logging set-up: JSON lines (or text), request ids, and a last-line redaction filter.

``LOG_FORMAT=json`` (the default outside development) writes one JSON object per line with
``timestamp``, ``level``, ``logger``, ``message`` and, where known, ``request_id``,
``user_id``, ``box_id``, ``order_id`` and ``task_id``; ``LOG_FORMAT=text`` (the development
default) writes readable lines with the same fields appended as ``key=value``.

The fields come from a context variable: the API binds ``request_id`` per request (the
client's ``X-Request-ID`` when it is valid, else a new one, echoed in the response), the
publisher sends it with each task it enqueues, and the worker binds it again with the task's
``box_id`` and ``task_id`` (``workers/__init__.py``), so one grep follows a request into the
worker.

Code must never log secrets in the first place; the filter is a safety net for library
messages (for example a request body echoed by a debug handler).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import uuid
from typing import Any

_RULES = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[REDACTED]"),
    # "password": "...", 'token': '...', secret=..., ?token=...&
    (
        re.compile(
            r"""(?i)(["']?(?:password|passwd|token|secret|access_token|refresh_token|"""
            r"""authorization|api_key|private_key)["']?\s*[:=]\s*)(["']?)[^"'&\s,}]+"""
        ),
        r"\1\2[REDACTED]",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# --- context: request id, user, box, order, task ---------------------------------------------

FIELDS = ("request_id", "user_id", "box_id", "order_id", "task_id")
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("vibebox_log_context")
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def valid_request_id(value: str | None) -> str:
    """``value`` when it is 1-64 characters of ``[A-Za-z0-9._-]``, else a new id."""
    if value and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def bind(**fields: Any) -> contextvars.Token[dict[str, str]]:
    """Add fields to the log context (None values are dropped); undo with :func:`unbind`."""
    merged = {**_context.get({}), **{k: str(v) for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def unbind(token: contextvars.Token[dict[str, str]]) -> None:
    _context.reset(token)


def current(name: str) -> str | None:
    return _context.get({}).get(name)


def _user_id() -> str | None:
    try:
        from flask import has_request_context
        from flask_jwt_extended import get_jwt_identity

        if has_request_context():
            identity = get_jwt_identity()
            return str(identity) if identity is not None else None
    except Exception:  # no verified token in this request
        return None
    return None


class ContextFilter(logging.Filter):
    """Copies the bound fields (and the authenticated user) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get({}).items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if getattr(record, "user_id", None) is None:
            user = _user_id()
            if user is not None:
                record.user_id = user
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(name)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{text} {extra}" if extra else text


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def log_format(env: dict[str, str] | None = None) -> str:
    """LOG_FORMAT: ``json`` or ``text``; by default ``text`` in development, else ``json``
    (app.config.LogSettings)."""
    from app.config import LogSettings

    return LogSettings.from_env(env).format


def init_app(app: Any) -> None:
    """Request ids: accept a valid ``X-Request-ID``, else make one; echo it; log with it."""
    from flask import g, request

    @app.before_request
    def _bind_request_id() -> None:
        g.request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER))
        g._log_token = bind(request_id=g.request_id)

    @app.after_request
    def _echo_request_id(response: Any) -> Any:
        if "request_id" not in g:  # refused before our hook ran
            g.request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = g.request_id
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        token = g.pop("_log_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # created in another context
                unbind(token)


_configured = False


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    """Log lines as ``fmt`` (json or text; None: LOG_FORMAT's default) at ``level``."""
    global _configured
    root = logging.getLogger()
    if not _configured:
        handler = logging.StreamHandler()
        json_lines = (fmt or log_format()) == "json"
        handler.setFormatter(json_formatter() if json_lines else TextFormatter())
        if not root.handlers:
            root.addHandler(handler)
        for existing in root.handlers:
            existing.addFilter(ContextFilter())
            existing.addFilter(RedactingFilter())
        _configured = True
    root.setLevel(level)
    # Alembic's INFO lines are noise when /readyz reads the migration scripts.
    logging.getLogger("alembic").setLevel(logging.WARNING)
