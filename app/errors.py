"""Domain errors and their single HTTP mapping.

Services raise these; ``app.api.errors`` turns them into the JSON error shape
``{"code": ..., "message": ..., "errors": {...}?}``. Integrations raise
``TransientError`` / ``PermanentError`` so callers (Celery tasks) can decide to retry.
"""

from __future__ import annotations

from typing import Any


class VibeBoxError(Exception):
    """Base class of errors that map to an HTTP answer."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        errors: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        if code is not None:
            self.code = code
        self.errors = errors
        self.extra = extra or {}


class ValidationError(VibeBoxError):
    """The request is not valid."""

    status_code = 422
    code = "validation_error"


class InvalidJSONError(VibeBoxError):
    """The request body is not valid JSON."""

    status_code = 400
    code = "invalid_json"


class PayloadTooLargeError(VibeBoxError):
    """The request body is too large."""

    status_code = 413
    code = "payload_too_large"


class AuthenticationError(VibeBoxError):
    """Authentication failed."""

    status_code = 401
    code = "unauthorized"


class MetricsTokenRequiredError(AuthenticationError):
    """A valid METRICS_TOKEN bearer token is required."""

    code = "metrics_token_required"
    headers = {"WWW-Authenticate": 'Bearer realm="metrics"'}


class PermissionDeniedError(VibeBoxError):
    """You are not allowed to do this."""

    status_code = 403
    code = "forbidden"


class NotFoundError(VibeBoxError):
    """Not found."""

    status_code = 404
    code = "not_found"


class ConflictError(VibeBoxError):
    """The request conflicts with the current state."""

    status_code = 409
    code = "conflict"


class InvalidStateError(ConflictError):
    """The resource is not in a state that allows this."""

    code = "invalid_state"


class ServiceUnavailableError(VibeBoxError):
    """A backing service this request needs is down; retry after ``retry_after`` seconds."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str | None = None, *, retry_after: int = 5, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class LongPollBusyError(VibeBoxError):
    """This API process already holds ``WEB_MAX_WAITERS`` long polls; poll again later."""

    status_code = 429
    code = "long_poll_busy"

    def __init__(self, message: str | None = None, *, retry_after: int = 5, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


# --- payments ---------------------------------------------------------------------------


class PaymentProviderError(VibeBoxError):
    """The payment provider could not be reached or refused the request."""

    status_code = 502
    code = "payment_provider_error"


class UnknownOrderError(VibeBoxError):
    """A verified event names an order we never created."""

    status_code = 400
    code = "unknown_order"


class AmountMismatchError(VibeBoxError):
    """A verified payment's amount or currency differs from the order's."""

    status_code = 400
    code = "amount_mismatch"


# --- Happy ------------------------------------------------------------------------------


class HappyServerError(VibeBoxError):
    """The Happy server could not be reached or refused the request."""

    status_code = 502
    code = "happy_unavailable"


# --- integration faults (never shown to HTTP clients directly) -------------------------


class IntegrationError(Exception):
    """A remote system (Happy, SSH host, payment provider, cloud) failed.

    ``safe_message`` is fit to show a user (no secrets, no hostnames of other users).
    """

    def __init__(self, message: str, *, safe_message: str | None = None) -> None:
        super().__init__(message)
        self.safe_message = safe_message or message


class TransientError(IntegrationError):
    """A fault that may go away: retry with backoff."""


class PermanentError(IntegrationError):
    """A fault that will not go away by retrying: fail the step now."""


class HostUnreachableError(TransientError):
    """The SSH host did not answer (connection refused, timeout, socket error)."""


class HostKeyMismatchError(PermanentError):
    """The SSH host presented a key other than the pinned one."""


class SSHAuthError(PermanentError):
    """The SSH host refused our credentials."""
