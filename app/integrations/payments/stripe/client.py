"""Stripe: Checkout Sessions in subscription mode, signed webhooks, reconciliation.

One ``stripe.StripeClient`` per provider (never the global ``stripe.api_key``), pointed at
``STRIPE_API_BASE`` when set (tests use a local double), with a request timeout and a small
network-retry budget. Retries are safe: every POST carries an idempotency key (ours for the
checkout, ``f"checkout-{order_id}"``; the SDK's own for the rest).

SDK exceptions never leave this package: connection errors, timeouts, 409, 429 and 5xx become
``TransientError``; other 4xx ``PermanentError``. Neither the secret key nor the webhook
secret appears in a message or a log line. What we rely on from Stripe: docs/payments.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import stripe

from app.errors import IntegrationError, PermanentError, TransientError
from app.integrations.payments.base import (
    CheckoutRequest,
    CheckoutSession,
    EventKind,
    OrderQuery,
    OrderRef,
    OrderState,
    ProviderEvent,
    ProviderNotConfiguredError,
    WebhookReply,
    WebhookRequest,
    with_query,
)
from app.integrations.payments.fields import int_at, str_at, upper
from app.integrations.payments.stripe.events import (
    PAID_STATUSES,
    PROVIDER_NAME,
    _session_event,
    verified_events,
)
from app.integrations.payments.stripe.settings import (
    ENV_API_BASE,
    ENV_PRICE_IDS,
    ENV_SECRET_KEY,
    ENV_WEBHOOK_SECRET,
    _parse_price_ids,
)

if TYPE_CHECKING:
    from stripe.params.checkout import SessionCreateParams

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final[tuple[float, float]] = (3.05, 20.0)  # (connect, read) seconds
DEFAULT_MAX_NETWORK_RETRIES: Final = 2


class StripeProvider:
    """``PaymentProvider`` for Stripe Checkout (mode ``subscription``)."""

    name = PROVIDER_NAME

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

        session_id = str_at(session, "id")
        url = str_at(session, "url")
        if not session_id or not url:
            raise PermanentError(
                "Stripe created a checkout session without an id or url",
                safe_message="The payment provider gave an unexpected answer.",
            )
        amount, currency = int_at(session, "amount_total"), upper(str_at(session, "currency"))
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
        """Verify the ``Stripe-Signature`` and map the event (see ``events``)."""
        return verified_events(request, self._webhook_secret)

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
        status = str_at(session, "status")
        if status == "complete" and str_at(session, "payment_status") in PAID_STATUSES:
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
            return str_at(
                self._client.v1.checkout.sessions.retrieve(session_id).to_dict(), "status"
            )
        except stripe.StripeError as exc:
            raise self._error("retrieve checkout session", exc) from None

    def _subscription_status(self, subscription_id: str) -> str | None:
        try:
            return str_at(
                self._client.v1.subscriptions.retrieve(subscription_id).to_dict(), "status"
            )
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
