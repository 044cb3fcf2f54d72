"""The OpenAPI document describes the error bodies the API really sends.

- :class:`ErrorSchema` is the shape of every 4xx/5xx body (``app.api.errors``): a string
  ``code``, a ``message``, ``errors`` for field problems, and extra keys some answers add
  (``status`` of the resource on a 409, ``maxBytes`` on a 413). flask-smorest uses it for
  every generated error response (``default`` and the status components).
- :class:`ErrorResponsesPlugin` documents, per operation, the errors the generic request
  handling can give: 400 ``invalid_json`` and 413 ``payload_too_large`` where a body is taken,
  401 where a session is needed, 403 on admin routes, 429 where the per-IP rate limit applies.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec, BasePlugin
from flask_smorest import Api
from marshmallow import INCLUDE, Schema, fields

# Routes flask-limiter does not limit (``limiter.exempt``): no 429 documented there.
NOT_RATE_LIMITED = frozenset({"/healthz", "/readyz", "/api/subscriptions/webhook/{provider_name}"})


class ErrorSchema(Schema):
    """Every error answer: ``{"code", "message", "errors"?, ...}``."""

    class Meta:
        unknown = INCLUDE  # documented as additionalProperties: true

    code = fields.String(
        required=True,
        metadata={"description": "Stable machine-readable code, e.g. `validation_error`"},
    )
    message = fields.String(required=True, metadata={"description": "Human-readable message"})
    errors = fields.Dict(
        keys=fields.String(),
        metadata={
            "description": "Field problems: field name -> list of messages (or nested "
            "objects for nested fields); only on validation errors"
        },
    )
    status = fields.String(
        metadata={"description": "Current status of the resource, on some 409 answers"}
    )
    maxBytes = fields.Integer(
        metadata={"description": "The body size limit, on 413 `payload_too_large`"}
    )


class VibeBoxApi(Api):
    ERROR_SCHEMA = ErrorSchema


class WebhookNackSchema(Schema):
    """Stripe's and the dev provider's refusal (the provider retries later)."""

    error = fields.String(required=True)


_JSON_ERROR = {"application/json": {"schema": ErrorSchema}}
# Payment webhooks answer in each provider's own format (app/integrations/payments).
_WEBHOOK_RESPONSES: dict[str, dict[str, Any]] = {
    "WebhookAccepted": {
        "description": 'Accepted: `{"received": true}` (Stripe, dev) or the bare word '
        "`success` (Alipay)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    "WebhookAcceptedNoContent": {"description": "Accepted (WeChat Pay): no body"},
    "WebhookRejected": {
        "description": "Refused (forged, stale or malformed, unknown order, amount mismatch) "
        'in the provider\'s format: `{"error": ...}` (Stripe, dev), `{"code": "FAIL", '
        '"message": ...}` (WeChat Pay), `failure` (Alipay); or `invalid_json`',
        "content": {
            "application/json": {"schema": {"anyOf": [ErrorSchema, WebhookNackSchema]}},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
}
WEBHOOK_DOC = {
    "responses": {200: "WebhookAccepted", 204: "WebhookAcceptedNoContent", 400: "WebhookRejected"}
}


_RESPONSES: dict[str, tuple[int, str]] = {
    "InvalidJSON": (
        400,
        "`invalid_json`: the body is not valid JSON (UTF-8, at most 32 levels deep, no "
        "NaN/Infinity)",
    ),
    "Unauthorized": (
        401,
        "`unauthorized`, `invalid_token`, `token_expired`, `token_revoked` or `csrf_failed`",
    ),
    "Forbidden": (403, "`admin_required`: an administrator's session is needed"),
    "PayloadTooLarge": (
        413,
        "`payload_too_large`: the body is over MAX_CONTENT_LENGTH (WEBHOOK_MAX_BYTES for webhooks)",
    ),
    "TooManyRequests": (429, "`rate_limited`: too many requests from this client; see Retry-After"),
    "NotFound": (404, "`not_found` (or a more specific code): no such resource, or not yours"),
}


class ErrorResponsesPlugin(BasePlugin):
    def init_spec(self, spec: APISpec) -> None:
        super().init_spec(spec)
        for name, (_status, description) in _RESPONSES.items():
            spec.components.response(
                name, {"description": description, "content": _JSON_ERROR}, lazy=True
            )
        for name, response in _WEBHOOK_RESPONSES.items():
            spec.components.response(name, response, lazy=True)

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any
    ) -> None:
        for method, operation in (operations or {}).items():
            if not isinstance(operation, dict) or method in ("parameters", "summary"):
                continue
            responses = operation.setdefault("responses", {})

            def add(name: str, responses: dict[Any, Any] = responses) -> None:
                status = _RESPONSES[name][0]
                if status not in responses and str(status) not in responses:
                    responses[status] = name

            for status, response in responses.items():
                # alt_response(404, description=...) etc.: the body is still an Error.
                if (
                    isinstance(response, dict)
                    and "content" not in response
                    and str(status).isdigit()
                    and int(status) >= 400
                ):
                    # By name: marshmallow schemas were resolved before this plugin ran.
                    response["content"] = {"application/json": {"schema": "Error"}}
            if path and "{" in path:
                add("NotFound")
            if "requestBody" in operation or method in ("post", "put", "patch"):
                add("InvalidJSON")
                add("PayloadTooLarge")
            if operation.get("security"):
                add("Unauthorized")
            if path and path.startswith("/api/admin/"):
                add("Forbidden")
            if path not in NOT_RATE_LIMITED:
                add("TooManyRequests")
