"""Generic request hardening, in one place for every route.

- **Body size**: ``MAX_CONTENT_LENGTH`` for every request, ``WEBHOOK_MAX_BYTES`` for the
  payment webhooks. A declared ``Content-Length`` over the limit is refused (413
  ``payload_too_large``) before anything reads the body; a streamed body without one
  (chunked) is read here, and refused as soon as it passes the limit.
- **JSON**: every JSON body (``application/json`` / ``application/*+json``, and any webhook
  body that starts like JSON whatever its declared type) is parsed here once with
  :func:`loads`: strict UTF-8, nested at most :data:`MAX_JSON_DEPTH` levels, no
  ``NaN``/``Infinity``, no numbers beyond what Python and PostgreSQL can hold. Anything else
  is 400 ``invalid_json`` before a view runs. Flask's ``request.get_json`` uses the same
  parser (:class:`SafeJSONProvider`); webhooks still verify signatures on the raw bytes,
  which are never re-serialized.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider

from app.errors import InvalidJSONError, PayloadTooLargeError

MAX_JSON_DEPTH = 32
# Endpoints whose bodies are limited by WEBHOOK_MAX_BYTES instead of MAX_CONTENT_LENGTH.
WEBHOOK_ENDPOINTS = frozenset({"subscriptions.Webhook"})


class JSONBodyError(ValueError):
    """Why a JSON document was refused (a ValueError, as ``json.loads`` raises)."""


def _no_constant(name: str) -> Any:
    raise JSONBodyError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONBodyError(f"number {text[:32]} is out of range")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON document or raise :class:`JSONBodyError` saying why not."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise JSONBodyError("the body is not UTF-8") from None
    else:
        text = data
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise JSONBodyError(f"nested deeper than {max_depth} levels") from None
    except JSONBodyError:
        raise
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise JSONBodyError(str(exc)) from None
    if _too_deep(value, max_depth):
        raise JSONBodyError(f"nested deeper than {max_depth} levels")
    return value


class SafeJSONProvider(DefaultJSONProvider):
    """``request.get_json()`` (and ``app.json.loads``) parse with :func:`loads`."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)


class GuardedRequest(Request):
    """A JSON body that does not parse is 400 ``invalid_json`` (not Werkzeug's HTML 400)."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            return super().on_json_loading_failed(e)  # not JSON at all: 415
        raise InvalidJSONError(f"The request body is not valid JSON: {e}")


def _looks_like_json(data: bytes) -> bool:
    return data.lstrip()[:1] in (b"{", b"[")


def guard_request() -> None:
    """``before_request``: body size, then JSON well-formedness and depth."""
    from app import get_settings

    limits = get_settings().limits
    webhook = request.endpoint in WEBHOOK_ENDPOINTS
    limit = limits.webhook_max_bytes if webhook else limits.max_content_length
    length = request.content_length
    if length is not None:
        if length > limit:
            raise _too_large(f"The request body is {length} bytes", limit)
        request.max_content_length = limit
    elif request.environ.get("wsgi.input_terminated"):
        # Streamed (chunked): Werkzeug stops reading at max_content_length without saying
        # whether more was coming; one byte past the limit tells a body that is too large.
        request.max_content_length = limit + 1
        if len(request.get_data(cache=True)) > limit:
            raise _too_large("The request body is too large", limit)
    if not (request.is_json or webhook):
        return
    data = request.get_data(cache=True)
    if data.strip() and (request.is_json or _looks_like_json(data)):
        request.get_json(force=True)  # parsed once (cached); errors -> 400 invalid_json


def _too_large(what: str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what}; at most {limit} bytes are accepted", extra={"maxBytes": limit}
    )


def init_request_guard(app: Flask) -> None:
    app.request_class = GuardedRequest
    app.json = SafeJSONProvider(app)
    app.before_request(guard_request)
