"""Stripe: Checkout Sessions in subscription mode, signed webhooks, reconciliation.

One ``stripe.StripeClient`` per provider (never the global ``stripe.api_key``), pointed at
``STRIPE_API_BASE`` when set (tests use a local double), with a request timeout and a small
network-retry budget. Retries are safe: every POST carries an idempotency key (ours for the
checkout, ``f"checkout-{order_id}"``; the SDK's own for the rest).

Webhooks are verified with ``stripe.Webhook.construct_event`` (HMAC-SHA256 over
``"{t}.{body}"``, default 300 s tolerance) and mapped to one normalized ``ProviderEvent``:

==========================================  ==================================================
Stripe event                                ``EventKind``
==========================================  ==================================================
checkout.session.completed, paid /          PAID (order from metadata.orderId or
no_payment_required                         client_reference_id; session, subscription,
                                            customer, amount_total, currency)
checkout.session.completed, unpaid          IGNORED (an async payment is still pending)
checkout.session.async_payment_succeeded    PAID
checkout.session.async_payment_failed       PAYMENT_FAILED
invoice.paid, billing_reason                PAID (order from the subscription metadata; may
subscription_create                         arrive before checkout.session.completed)
invoice.paid, any other billing_reason      RENEWED (period_end = the subscription line's end)
invoice.payment_failed                      PAYMENT_FAILED
customer.subscription.updated               CANCEL_AT_PERIOD_END if cancel_at_period_end,
                                            else IGNORED
customer.subscription.deleted               CANCELED
anything else                               IGNORED
==========================================  ==================================================

SDK exceptions never leave this module: connection errors, timeouts, 409, 429 and 5xx become
``TransientError``; other 4xx ``PermanentError``. Neither the secret key nor the webhook
secret appears in a message or a log line. What we rely on from Stripe: docs/payments.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import stripe

from app.errors import IntegrationError, PermanentError, TransientError
from app.integrations.payments.base import (
    CheckoutRequest,
    CheckoutSession,
    EventKind,
    InvalidWebhookError,
    OrderQuery,
    OrderRef,
    OrderState,
    ProviderEvent,
    ProviderNotConfiguredError,
    WebhookReply,
    WebhookRequest,
    with_query,
)

if TYPE_CHECKING:
    from stripe.params.checkout import SessionCreateParams

log = logging.getLogger(__name__)

ENV_SECRET_KEY: Final = "STRIPE_SECRET_KEY"  # noqa: S105 (a variable name)
ENV_WEBHOOK_SECRET: Final = "STRIPE_WEBHOOK_SECRET"  # noqa: S105
ENV_PRICE_IDS: Final = "STRIPE_PRICE_IDS"
ENV_API_BASE: Final = "STRIPE_API_BASE"

SIGNATURE_HEADER: Final = "Stripe-Signature"
DEFAULT_TIMEOUT: Final[tuple[float, float]] = (3.05, 20.0)  # (connect, read) seconds
DEFAULT_MAX_NETWORK_RETRIES: Final = 2
PAID_STATUSES: Final = frozenset({"paid", "no_payment_required"})


class StripeProvider:
    """``PaymentProvider`` for Stripe Checkout (mode ``subscription``)."""

    name = "stripe"

    def __init__(
        self,
        secret_key: str,
        webhook_secret: str,
        price_ids: Mapping[str, str],
        *,
        api_base: str | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_network_retries: int = DEFAULT_MAX_NETWORK_RETRIES,
    ) -> None:
        """``price_ids`` maps ``"plan_id:billing_cycle"`` to a Stripe price id."""
        if not 0 <= max_network_retries <= 2:
            raise ValueError("max_network_retries must be 0, 1 or 2")
        self._secret_key = secret_key
        self._webhook_secret = webhook_secret
        self.price_ids: dict[str, str] = dict(price_ids)
        self.api_base = (api_base or stripe.DEFAULT_API_BASE).rstrip("/")
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": self.api_base},
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StripeProvider:
        """Build from ``STRIPE_*`` settings; ``ProviderNotConfiguredError`` names what is wrong."""
        required = (ENV_SECRET_KEY, ENV_WEBHOOK_SECRET, ENV_PRICE_IDS)
        missing = [name for name in required if not (env.get(name) or "").strip()]
        if missing:
            raise ProviderNotConfiguredError(f"Stripe is disabled: {', '.join(missing)} not set")
        price_ids = _parse_price_ids(env[ENV_PRICE_IDS])
        api_base = (env.get(ENV_API_BASE) or "").strip() or None
        if api_base is not None and urlsplit(api_base).scheme not in ("http", "https"):
            raise ProviderNotConfiguredError(
                f"Stripe is disabled: {ENV_API_BASE} must be an http(s) URL"
            )
        return cls(
            env[ENV_SECRET_KEY].strip(),
            env[ENV_WEBHOOK_SECRET].strip(),
            price_ids,
            api_base=api_base,
        )

    def __repr__(self) -> str:  # secrets stay out of reprs (and so out of tracebacks)
        return f"StripeProvider(api_base={self.api_base!r}, prices={sorted(self.price_ids)!r})"

    # --- checkout ------------------------------------------------------------------------

    def create_order(self, request: CheckoutRequest) -> CheckoutSession:
        """Create (or, for the same order, get back) the order's Checkout Session."""
        price_key = f"{request.plan_id}:{request.billing_cycle}"
        price_id = self.price_ids.get(price_key)
        if not price_id:
            raise PermanentError(
                f"Stripe has no price for {price_key!r} (add it to {ENV_PRICE_IDS})",
                safe_message="This plan cannot be paid with Stripe.",
            )
        metadata = {
            "orderId": request.order_id,
            "userId": request.user_id,
            "planId": request.plan_id,
        }
        params: SessionCreateParams = {
            "mode": "subscription",
            "line_items": [{"price": price_id, "quantity": 1}],
            "client_reference_id": request.order_id,
            "metadata": metadata,
            # Copied onto the subscription, so its invoices and events carry the order too.
            "subscription_data": {"metadata": dict(metadata)},
            "success_url": with_query(
                request.return_url, "checkout=success&session_id={CHECKOUT_SESSION_ID}"
            ),
            "cancel_url": with_query(request.return_url, "checkout=canceled"),
        }
        if request.user_email:
            params["customer_email"] = request.user_email
        try:
            # Our key, not the SDK's random one: a retried checkout (a lost answer, a
            # redelivered task) gets the same session back instead of a second one.
            session = self._client.v1.checkout.sessions.create(
                params, {"idempotency_key": f"checkout-{request.order_id}"}
            ).to_dict()
        except stripe.StripeError as exc:
            raise self._error("create checkout session", exc) from None

        session_id = _str(session, "id")
        url = _str(session, "url")
        if not session_id or not url:
            raise PermanentError(
                "Stripe created a checkout session without an id or url",
                safe_message="The payment provider gave an unexpected answer.",
            )
        amount, currency = _int(session, "amount_total"), _upper(_str(session, "currency"))
        if amount != request.amount or currency != request.currency.upper():
            # The webhook would then carry an amount the order does not expect and the
            # payment would be flagged instead of fulfilled: refuse before anyone pays.
            self._expire_quietly(session_id)
            raise PermanentError(
                f"Stripe price {price_id} for {price_key!r} is {amount} {currency}, "
                f"the plan is {request.amount} {request.currency.upper()}",
                safe_message="This plan cannot be paid with Stripe right now.",
            )
        log.info("stripe checkout session %s for order %s", session_id, request.order_id)
        return CheckoutSession(provider_order_id=session_id, checkout_url=url)

    # --- webhooks ------------------------------------------------------------------------

    def handle_callback(self, request: WebhookRequest) -> list[ProviderEvent]:
        """Verify the ``Stripe-Signature`` and map the event (see the module table)."""
        header = _header(request.headers, SIGNATURE_HEADER)
        if not header:
            raise InvalidWebhookError(f"missing {SIGNATURE_HEADER} header")
        try:
            event = stripe.Webhook.construct_event(request.body, header, self._webhook_secret)
        except stripe.SignatureVerificationError as exc:
            # The SDK's message says which check failed; it never contains the secret.
            raise InvalidWebhookError(f"stripe signature: {exc.user_message}") from None
        except (ValueError, TypeError, AttributeError, KeyError):
            # ValueError covers undecodable UTF-8 and invalid JSON.
            raise InvalidWebhookError("stripe webhook body is not a JSON event") from None
        data = event.to_dict()
        event_id, event_type = _str(data, "id"), _str(data, "type")
        obj = _dict(_dict(data, "data"), "object")
        if not event_id or not event_type or not obj:
            raise InvalidWebhookError("stripe event without id, type or data.object")
        return [_map_event(event_id, event_type, _timestamp(data.get("created")), obj)]

    def ack(self) -> WebhookReply:
        return WebhookReply(200, json.dumps({"received": True}))

    def nack(self, message: str) -> WebhookReply:
        return WebhookReply(400, json.dumps({"error": message}))

    # --- reconciliation and cancellation -------------------------------------------------

    def query_order(self, order: OrderRef) -> OrderQuery:
        """State of the order's Checkout Session; PAID carries a synthetic event."""
        session_id = order.provider_order_id
        if not session_id:
            return OrderQuery(OrderState.UNKNOWN)
        try:
            session = self._client.v1.checkout.sessions.retrieve(session_id).to_dict()
        except stripe.StripeError as exc:
            if exc.http_status == 404:
                return OrderQuery(OrderState.UNKNOWN)
            raise self._error("retrieve checkout session", exc) from None
        status = _str(session, "status")
        if status == "complete" and _str(session, "payment_status") in PAID_STATUSES:
            event = _session_event(
                f"query:{session_id}",
                "checkout.session.completed",
                EventKind.PAID,
                session,
                datetime.now(UTC),
                source="query",
            )
            return OrderQuery(OrderState.PAID, event)
        if status == "expired":
            return OrderQuery(OrderState.FAILED)
        # open, or complete with an async payment still in flight
        return OrderQuery(OrderState.PENDING)

    def cancel_order(self, order: OrderRef) -> None:
        """Expire the open Checkout Session; nothing to do once it is complete or expired."""
        session_id = order.provider_order_id
        if not session_id:
            return
        try:
            self._client.v1.checkout.sessions.expire(session_id)
        except stripe.StripeError as exc:
            if exc.http_status == 404:
                return
            if exc.http_status == 400 and self._session_status(session_id) != "open":
                return  # "Only Checkout Sessions with a status in ["open"] can be expired"
            raise self._error("expire checkout session", exc) from None

    def cancel_subscription(self, provider_subscription_id: str, *, at_period_end: bool) -> None:
        """Stop renewing at the end of the period, or cancel now."""
        subscriptions = self._client.v1.subscriptions
        try:
            if at_period_end:
                subscriptions.update(provider_subscription_id, {"cancel_at_period_end": True})
            else:
                subscriptions.cancel(provider_subscription_id)
        except stripe.StripeError as exc:
            if not at_period_end and exc.http_status == 404:
                # Stripe answers "No such subscription" for one that is already canceled.
                log.info("stripe subscription %s already gone", provider_subscription_id)
                return
            if (
                at_period_end
                and exc.http_status == 400
                and self._subscription_status(provider_subscription_id) == "canceled"
            ):
                return  # "A canceled subscription can only update its cancellation_details"
            raise self._error("cancel subscription", exc) from None

    # --- helpers -------------------------------------------------------------------------

    def _session_status(self, session_id: str) -> str | None:
        try:
            return _str(self._client.v1.checkout.sessions.retrieve(session_id).to_dict(), "status")
        except stripe.StripeError as exc:
            raise self._error("retrieve checkout session", exc) from None

    def _subscription_status(self, subscription_id: str) -> str | None:
        try:
            return _str(self._client.v1.subscriptions.retrieve(subscription_id).to_dict(), "status")
        except stripe.StripeError as exc:
            raise self._error("retrieve subscription", exc) from None

    def _expire_quietly(self, session_id: str) -> None:
        try:
            self._client.v1.checkout.sessions.expire(session_id)
        except stripe.StripeError as exc:
            log.warning("%s", self._error(f"expire checkout session {session_id}", exc))

    def _error(self, what: str, exc: stripe.StripeError) -> IntegrationError:
        """Classify an SDK error: may a retry help (Transient) or not (Permanent)?"""
        status = exc.http_status
        if isinstance(exc, stripe.APIConnectionError) or status is None:
            return TransientError(
                f"Stripe {what}: {type(exc).__name__} (no answer)",
                safe_message="The payment provider is unreachable.",
            )
        detail = self._redact(exc.user_message or "")[:200]
        code = f" {exc.code}" if exc.code else ""
        message = f"Stripe {what}: HTTP {status}{code} {detail}".rstrip()
        # 409: a concurrent request with the same idempotency key is still in flight.
        if status >= 500 or status in (409, 429):
            return TransientError(message, safe_message="The payment provider is failing.")
        return PermanentError(message, safe_message="The payment provider refused the request.")

    def _redact(self, text: str) -> str:
        for secret in (self._secret_key, self._webhook_secret):
            if secret:
                text = text.replace(secret, "***")
        return text


# --- event mapping (pure functions of verified data) -----------------------------------


def _map_event(
    event_id: str, event_type: str, occurred_at: datetime | None, obj: dict[str, Any]
) -> ProviderEvent:
    if event_type == "checkout.session.completed":
        if _str(obj, "payment_status") in PAID_STATUSES:
            return _session_event(event_id, event_type, EventKind.PAID, obj, occurred_at)
        # unpaid: a delayed method (bank debit...); async_payment_succeeded/failed follows.
        return _session_event(event_id, event_type, EventKind.IGNORED, obj, occurred_at)
    if event_type == "checkout.session.async_payment_succeeded":
        return _session_event(event_id, event_type, EventKind.PAID, obj, occurred_at)
    if event_type == "checkout.session.async_payment_failed":
        return _session_event(event_id, event_type, EventKind.PAYMENT_FAILED, obj, occurred_at)
    if event_type == "invoice.paid":
        return _invoice_paid_event(event_id, event_type, obj, occurred_at)
    if event_type == "invoice.payment_failed":
        return _invoice_event(event_id, event_type, EventKind.PAYMENT_FAILED, obj, occurred_at)
    if event_type == "customer.subscription.updated":
        kind = (
            EventKind.CANCEL_AT_PERIOD_END
            if obj.get("cancel_at_period_end") is True
            else EventKind.IGNORED
        )
        return _subscription_event(event_id, event_type, kind, obj, occurred_at)
    if event_type == "customer.subscription.deleted":
        return _subscription_event(event_id, event_type, EventKind.CANCELED, obj, occurred_at)
    return ProviderEvent(
        provider=StripeProvider.name,
        event_id=event_id,
        type=event_type,
        kind=EventKind.IGNORED,
        occurred_at=occurred_at,
        payload={"object": _str(obj, "object"), "id": _str(obj, "id")},
    )


def _session_event(
    event_id: str,
    event_type: str,
    kind: EventKind,
    session: dict[str, Any],
    occurred_at: datetime | None,
    *,
    source: str = "webhook",
) -> ProviderEvent:
    metadata = _metadata(session)
    subscription_id = _ref_id(session.get("subscription"))
    customer_id = _ref_id(session.get("customer"))
    amount = _int(session, "amount_total")
    currency = _upper(_str(session, "currency"))
    return ProviderEvent(
        provider=StripeProvider.name,
        event_id=event_id,
        type=event_type,
        kind=kind,
        order_id=metadata.get("orderId") or _str(session, "client_reference_id"),
        provider_order_id=_str(session, "id"),
        provider_subscription_id=subscription_id,
        provider_customer_id=customer_id,
        amount=amount,
        currency=currency,
        occurred_at=occurred_at,
        payload={
            "source": source,
            "session_id": _str(session, "id"),
            "status": _str(session, "status"),
            "payment_status": _str(session, "payment_status"),
            "mode": _str(session, "mode"),
            "client_reference_id": _str(session, "client_reference_id"),
            "metadata": metadata,
            "subscription": subscription_id,
            "customer": customer_id,
            "amount_total": amount,
            "currency": currency,
        },
    )


def _invoice_paid_event(
    event_id: str, event_type: str, invoice: dict[str, Any], occurred_at: datetime | None
) -> ProviderEvent:
    if not _invoice_subscription(invoice):
        return _invoice_event(event_id, event_type, EventKind.IGNORED, invoice, occurred_at)
    if _str(invoice, "billing_reason") == "subscription_create":
        # The first invoice: the same payment as checkout.session.completed (which may come
        # later); a second PAID for the order is a no-op for the service.
        return _invoice_event(event_id, event_type, EventKind.PAID, invoice, occurred_at)
    return _invoice_event(event_id, event_type, EventKind.RENEWED, invoice, occurred_at)


def _invoice_event(
    event_id: str,
    event_type: str,
    kind: EventKind,
    invoice: dict[str, Any],
    occurred_at: datetime | None,
) -> ProviderEvent:
    metadata = _invoice_metadata(invoice)
    subscription_id = _invoice_subscription(invoice)
    customer_id = _ref_id(invoice.get("customer"))
    paid = kind in (EventKind.PAID, EventKind.RENEWED)
    amount = _int(invoice, "amount_paid" if paid else "amount_due")
    currency = _upper(_str(invoice, "currency"))
    period_end = _invoice_period_end(invoice)
    return ProviderEvent(
        provider=StripeProvider.name,
        event_id=event_id,
        type=event_type,
        kind=kind,
        order_id=metadata.get("orderId"),
        provider_subscription_id=subscription_id,
        provider_customer_id=customer_id,
        amount=amount,
        currency=currency,
        occurred_at=occurred_at,
        period_end=period_end if paid else None,
        payload={
            "invoice_id": _str(invoice, "id"),
            "billing_reason": _str(invoice, "billing_reason"),
            "status": _str(invoice, "status"),
            "metadata": metadata,
            "subscription": subscription_id,
            "customer": customer_id,
            "amount_paid": _int(invoice, "amount_paid"),
            "amount_due": _int(invoice, "amount_due"),
            "currency": currency,
            "period_end": period_end.isoformat() if period_end else None,
        },
    )


def _subscription_event(
    event_id: str,
    event_type: str,
    kind: EventKind,
    subscription: dict[str, Any],
    occurred_at: datetime | None,
) -> ProviderEvent:
    metadata = _metadata(subscription)
    customer_id = _ref_id(subscription.get("customer"))
    period_end = _subscription_period_end(subscription)
    return ProviderEvent(
        provider=StripeProvider.name,
        event_id=event_id,
        type=event_type,
        kind=kind,
        order_id=metadata.get("orderId"),
        provider_subscription_id=_str(subscription, "id"),
        provider_customer_id=customer_id,
        occurred_at=occurred_at,
        payload={
            "subscription": _str(subscription, "id"),
            "status": _str(subscription, "status"),
            "cancel_at_period_end": subscription.get("cancel_at_period_end") is True,
            "cancel_at": _int(subscription, "cancel_at"),
            "canceled_at": _int(subscription, "canceled_at"),
            "current_period_end": period_end.isoformat() if period_end else None,
            "metadata": metadata,
            "customer": customer_id,
        },
    )


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription id: ``parent.subscription_details`` (API 2025-03-31 and later) or
    the older top-level ``subscription``, else the subscription lines'."""
    details = _dict(_dict(invoice, "parent"), "subscription_details")
    found = _ref_id(details.get("subscription")) or _ref_id(invoice.get("subscription"))
    if found:
        return found
    for line in _subscription_lines(invoice):
        item_details = _dict(_dict(line, "parent"), "subscription_item_details")
        found = _ref_id(item_details.get("subscription")) or _ref_id(line.get("subscription"))
        if found:
            return found
    return None


def _invoice_metadata(invoice: dict[str, Any]) -> dict[str, str]:
    """The subscription metadata snapshot the invoice carries (where depends on API version)."""
    for details in (
        _dict(_dict(invoice, "parent"), "subscription_details"),
        _dict(invoice, "subscription_details"),
    ):
        metadata = _metadata(details)
        if metadata:
            return metadata
    for line in _subscription_lines(invoice):
        metadata = _metadata(line)  # subscription lines carry the subscription's metadata
        if metadata:
            return metadata
    return {}


def _invoice_period_end(invoice: dict[str, Any]) -> datetime | None:
    """End of the period the invoice paid for: its subscription lines' ``period.end``.

    Not ``invoice.period_end``: for subscription invoices that is the end of the *previous*
    period.
    """
    ends = [_int(_dict(line, "period"), "end") for line in _subscription_lines(invoice)]
    known = [end for end in ends if end is not None]
    return _timestamp(max(known)) if known else None


def _subscription_lines(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [line for line in _list(_dict(invoice, "lines"), "data") if isinstance(line, dict)]
    subscription_lines = [
        line
        for line in lines
        if _str(_dict(line, "parent"), "type") == "subscription_item_details"
        or _str(line, "type") == "subscription"
    ]
    return subscription_lines or lines


def _subscription_period_end(subscription: dict[str, Any]) -> datetime | None:
    """``current_period_end``: per item since API 2025-03-31, top-level before."""
    ends = [
        _int(item, "current_period_end")
        for item in _list(_dict(subscription, "items"), "data")
        if isinstance(item, dict)
    ]
    known = [end for end in ends if end is not None]
    if known:
        return _timestamp(max(known))
    return _timestamp(subscription.get("current_period_end"))


# --- small typed readers of verified JSON ----------------------------------------------


def _dict(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _upper(value: str | None) -> str | None:
    return value.upper() if value else None


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in _dict(obj, "metadata").items() if isinstance(v, str)}


def _ref_id(value: Any) -> str | None:
    """An expandable field: an id string, or the expanded object's id."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        return _str(value, "id")
    return None


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that also works on a plain dict with other capitalization."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _parse_price_ids(raw: str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise ProviderNotConfiguredError(
            f"Stripe is disabled: {ENV_PRICE_IDS} is not valid JSON"
        ) from None
    if (
        not isinstance(value, dict)
        or not value
        or not all(
            isinstance(k, str) and ":" in k and isinstance(v, str) and v for k, v in value.items()
        )
    ):
        raise ProviderNotConfiguredError(
            f"Stripe is disabled: {ENV_PRICE_IDS} must be a JSON object like "
            f'{{"basic:monthly": "price_..."}}'
        )
    return {k.strip(): v.strip() for k, v in value.items()}
