"""The ``PaymentProvider`` interface and the small dataclasses it speaks.

Providers translate their SDK and wire formats into these types and never leak SDK
objects. Verification failures raise ``InvalidWebhookError`` (the API answers 400 with the
provider's own error body); remote API faults raise ``TransientError`` / ``PermanentError``
from ``app.errors``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit


class InvalidWebhookError(Exception):
    """A callback that failed verification (signature, timestamp, format, merchant ids).

    ``reason`` is for logs (no secrets); it is never echoed to the caller in detail.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderNotConfiguredError(Exception):
    """Settings for a provider are missing or invalid; the provider stays disabled."""


@dataclass(frozen=True)
class CheckoutRequest:
    order_id: str  # our order id (UUID string); hex form via ``order_ref``
    user_id: str
    user_email: str
    plan_id: str
    plan_name: str
    billing_cycle: str  # "monthly" | "yearly"
    amount: int  # minor units, from the plan (never from the client)
    currency: str  # ISO 4217, upper case
    notify_url: str  # our webhook URL for this provider
    return_url: str  # where the user's browser goes after paying

    @property
    def order_ref(self) -> str:
        """32 hex chars: fits WeChat's out_trade_no (6-32 chars) and Alipay's (<= 64)."""
        return self.order_id.replace("-", "")


@dataclass(frozen=True)
class CheckoutSession:
    provider_order_id: str  # Stripe session id, WeChat/Alipay out_trade_no
    checkout_url: str | None = None  # redirect (Stripe, Alipay page pay, dev)
    qr_code_url: str | None = None  # QR content (WeChat Native code_url, Alipay precreate)


class EventKind(enum.Enum):
    PAID = "paid"  # the order is paid: fulfil it
    RENEWED = "renewed"  # a subscription period was paid: extend it
    PAYMENT_FAILED = "payment_failed"  # a payment failed (order failed / subscription past due)
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"
    CANCELED = "canceled"  # the subscription ended now
    REFUNDED = "refunded"  # the order's payment was refunded in full: take back what it bought
    IGNORED = "ignored"  # verified, recorded, nothing to do


@dataclass(frozen=True)
class ProviderEvent:
    """One verified, normalized notification."""

    provider: str
    event_id: str  # unique per provider: the idempotency key
    type: str  # the provider's own event type, for the audit log
    kind: EventKind
    order_id: str | None = None  # our order id (UUID string) when the provider tells it
    provider_order_id: str | None = None
    provider_subscription_id: str | None = None
    provider_customer_id: str | None = None
    amount: int | None = None  # minor units
    currency: str | None = None
    occurred_at: datetime | None = None
    period_end: datetime | None = None  # for RENEWED: the new end of the paid period
    payload: dict[str, Any] = field(default_factory=dict)  # verified data, for audit
    # A PAID event must say what was paid (amount + currency), checked against the order;
    # only the dev provider, which pays exactly the order by construction, is exempt.
    amount_required: bool = True


@dataclass(frozen=True)
class WebhookRequest:
    headers: Mapping[str, str]  # case-insensitive mapping (werkzeug Headers) in the API
    body: bytes


@dataclass(frozen=True)
class WebhookReply:
    """What the provider expects back (Alipay: the bare word ``success``)."""

    status: int
    body: str
    content_type: str = "application/json"


class OrderState(enum.Enum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"  # closed / expired / canceled at the provider
    UNKNOWN = "unknown"  # the provider does not know the order (yet)


@dataclass(frozen=True)
class OrderQuery:
    """Answer of ``query_order``; a PAID answer is fulfilled like a webhook."""

    state: OrderState
    event: ProviderEvent | None = None  # set when PAID: a synthetic event with a stable id


@dataclass(frozen=True)
class OrderRef:
    """What a provider needs to look an order up."""

    order_id: str
    provider_order_id: str | None
    amount: int
    currency: str

    @property
    def order_ref(self) -> str:
        return self.order_id.replace("-", "")


class PaymentProvider(Protocol):
    name: str

    def create_order(self, request: CheckoutRequest) -> CheckoutSession:
        """Create the payment at the provider (idempotent per order)."""
        ...

    def handle_callback(self, request: WebhookRequest) -> list[ProviderEvent]:
        """Verify and parse a webhook; raise ``InvalidWebhookError`` when it fails."""
        ...

    def query_order(self, order: OrderRef) -> OrderQuery:
        """Ask the provider about an order (reconciliation of missed webhooks)."""
        ...

    def cancel_order(self, order: OrderRef) -> None:
        """Close an unpaid order at the provider (no-op when there is nothing to close)."""
        ...

    def cancel_subscription(self, provider_subscription_id: str, *, at_period_end: bool) -> None:
        """Cancel a recurring subscription at the provider (no-op for one-off providers)."""
        ...

    def ack(self) -> WebhookReply:
        """The success answer the provider expects."""
        ...

    def nack(self, message: str) -> WebhookReply:
        """The failure answer (the provider retries later)."""
        ...


def with_query(url: str, extra: str) -> str:
    """Append ``extra`` (already encoded; may hold Stripe's ``{CHECKOUT_SESSION_ID}``) to
    the query of ``url``."""
    parts = urlsplit(url)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))
