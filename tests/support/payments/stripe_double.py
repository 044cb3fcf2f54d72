"""A local double of the Stripe API, plus builders of webhook events signed as Stripe signs.

Built to docs/payments.md (Stripe).

Real HTTP on 127.0.0.1 (random port), so the real ``stripe`` SDK talks to it through the
base URL (``STRIPE_API_BASE`` / ``base_addresses={"api": double.url}``), form-encoded
requests and all. In memory, thread-safe:

- ``POST /v1/checkout/sessions``: validates mode, line items and that the price exists
  (``400 resource_missing`` "No such price" otherwise); answers ``cs_test_...`` with url,
  status ``open``, payment_status ``unpaid``, metadata, amount_total/currency from the
  price table. The ``Idempotency-Key`` header is recorded and replayed like Stripe does: the
  same key returns the SAME session (``Idempotent-Replayed: true``); the same key with other
  parameters is a ``400 idempotency_error``.
- ``GET /v1/checkout/sessions/{id}``, ``POST /v1/checkout/sessions/{id}/expire`` (only an
  open session; else 400 as Stripe words it).
- ``GET`` / ``POST`` (update: ``cancel_at_period_end``, ``metadata``) / ``DELETE`` (cancel
  now) ``/v1/subscriptions/{id}``; a canceled subscription answers 400 to updates and 404 to
  a second cancel, as Stripe does.
- Unknown ids: ``404 resource_missing``. A wrong API key (when ``api_key`` is set): 401.

Test helpers: :meth:`StripeDouble.complete_session` (the customer paid: session complete,
customer ``cus_...``, subscription ``sub_...`` with the session's ``subscription_data``
metadata, first invoice), :meth:`StripeDouble.renew_subscription` (next period's invoice),
fault switches (:meth:`StripeDouble.fail_next`, :attr:`StripeDouble.hang`) and the recorded
requests. Module-level builders make events (:func:`make_event`,
:func:`checkout_session_completed`, :func:`invoice_paid`, ...) and sign them
(:func:`sign_payload`, :func:`signed_webhook`) with ``stripe.WebhookSignature``.

Webhook objects are shaped like API version 2025-03-31 and later (``invoice.parent.
subscription_details``, per-item ``current_period_end``).

Standalone: ``python -m tests.support.payments.stripe_double --port 12111 --price
price_basic_monthly=999:usd:month``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl

import stripe

from tests.support.http_double import DoubleRequestHandler, InjectedFaults, ThreadedHTTPDouble

API_VERSION: str = stripe.api_version  # what the installed SDK sends
INTERVAL_SECONDS = {"day": 86_400, "week": 7 * 86_400, "month": 30 * 86_400, "year": 365 * 86_400}

Response = tuple[int, Any, dict[str, str]]


@dataclass(frozen=True)
class Price:
    id: str
    unit_amount: int  # minor units
    currency: str = "usd"  # lower case, as Stripe returns it
    interval: str = "month"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "price",
            "active": True,
            "currency": self.currency,
            "unit_amount": self.unit_amount,
            "type": "recurring",
            "recurring": {"interval": self.interval, "interval_count": 1},
        }


@dataclass
class _Faults(InjectedFaults):
    fail_status: int = 500
    fail_path: str = "/v1/"


@dataclass
class _State:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    session_extras: dict[str, dict[str, Any]] = field(default_factory=dict)  # price, sub data
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Idempotency-Key -> (route, params, status, body) of the first successful answer
    idempotency: dict[str, tuple[str, dict[str, Any], int, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)


class StripeDouble(ThreadedHTTPDouble):
    """The Stripe API double: ``with StripeDouble(prices=[...]) as double: double.url``."""

    _thread_name = "stripe-double"

    def __init__(
        self,
        prices: Iterable[Price] = (),
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """``api_key``: when set, any other bearer key is answered 401, like Stripe."""
        super().__init__(host, port)
        self.api_key = api_key
        self._lock = threading.RLock()
        self._prices = {price.id: price for price in prices}
        self._faults = _Faults()
        self._state = _State()

    # --- lifecycle ---------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    def reset(self) -> None:
        """Forget sessions, subscriptions, idempotency keys, requests and faults."""
        with self._lock:
            self._state = _State()
            self._faults = _Faults()

    # --- configuration and fault switches ----------------------------------------------

    def add_price(
        self, price_id: str, unit_amount: int, currency: str = "usd", interval: str = "month"
    ) -> Price:
        price = Price(price_id, unit_amount, currency.lower(), interval)
        with self._lock:
            self._prices[price_id] = price
        return price

    def fail_next(self, n: int = 1, status: int = 500, path: str = "/v1/") -> None:
        """Answer the next ``n`` API requests whose path starts with ``path`` with ``status``."""
        with self._lock:
            self._faults.fail_next(n, status, path)

    @property
    def hang(self) -> float:
        return self._faults.hang

    @hang.setter
    def hang(self, seconds: float) -> None:
        """Sleep this long before answering any API request (0 = off)."""
        with self._lock:
            self._faults.hang = seconds

    def reset_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    # --- inspection --------------------------------------------------------------------

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """Requests received (including faulted ones): method, path, params (decoded form),
        idempotency_key, stripe_version, status. ``path`` matches as a prefix."""
        with self._lock:
            return [
                copy.deepcopy(r)
                for r in self._state.requests
                if (method is None or r["method"] == method)
                and (path is None or r["path"].startswith(path))
            ]

    def session(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._state.sessions[session_id])

    def sessions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(s) for s in self._state.sessions.values()]

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._state.subscriptions[subscription_id])

    def latest_invoice(self, subscription_id: str) -> dict[str, Any]:
        with self._lock:
            invoice_id = self._state.subscriptions[subscription_id]["latest_invoice"]
            return copy.deepcopy(self._state.invoices[invoice_id])

    # --- what Stripe does when the customer acts ---------------------------------------

    def complete_session(
        self,
        session_id: str,
        subscription_id: str | None = None,
        *,
        customer_id: str | None = None,
        payment_status: str = "paid",
    ) -> dict[str, Any]:
        """The customer paid: the session is complete (``payment_status`` ``paid``, or
        ``unpaid`` for a delayed method), with a new customer and an active subscription
        carrying the session's ``subscription_data.metadata`` and a paid first invoice
        (``billing_reason`` ``subscription_create``). Returns the session."""
        with self._lock:
            session = self._state.sessions[session_id]
            if session["status"] != "open":
                raise ValueError(f"session {session_id} is {session['status']}, not open")
            extras = self._state.session_extras[session_id]
            price: Price = extras["price"]
            now = int(time.time())
            customer = customer_id or _new_id("cus_")
            sub_id = subscription_id or _new_id("sub_")
            metadata = dict(extras["subscription_metadata"])
            subscription = {
                "id": sub_id,
                "object": "subscription",
                "customer": customer,
                "status": "active",
                "cancel_at_period_end": False,
                "cancel_at": None,
                "canceled_at": None,
                "ended_at": None,
                "created": now,
                "start_date": now,
                "metadata": metadata,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": _new_id("si_"),
                            "object": "subscription_item",
                            "price": price.to_dict(),
                            "quantity": 1,
                            "current_period_start": now,
                            "current_period_end": now + INTERVAL_SECONDS[price.interval],
                        }
                    ],
                },
                "latest_invoice": None,
                "livemode": False,
            }
            self._state.subscriptions[sub_id] = subscription
            invoice = invoice_object(
                sub_id,
                billing_reason="subscription_create",
                amount=price.unit_amount,
                currency=price.currency,
                period_start=now,
                period_end=now + INTERVAL_SECONDS[price.interval],
                metadata=metadata,
                customer_id=customer,
                price_id=price.id,
                paid=payment_status != "unpaid",
            )
            self._state.invoices[invoice["id"]] = invoice
            subscription["latest_invoice"] = invoice["id"]
            session.update(
                status="complete",
                payment_status=payment_status,
                customer=customer,
                subscription=sub_id,
                invoice=invoice["id"],
                url=None,
            )
            return copy.deepcopy(session)

    def expire_session(self, session_id: str) -> dict[str, Any]:
        """The session's 24 h ran out."""
        with self._lock:
            session = self._state.sessions[session_id]
            session.update(status="expired", url=None)
            return copy.deepcopy(session)

    def renew_subscription(self, subscription_id: str, *, paid: bool = True) -> dict[str, Any]:
        """Bill the next period: advances ``current_period_*`` (when paid) and returns the new
        invoice (``billing_reason`` ``subscription_cycle``) for :func:`invoice_paid_for`."""
        with self._lock:
            subscription = self._state.subscriptions[subscription_id]
            item = subscription["items"]["data"][0]
            price = item["price"]
            start = item["current_period_end"]
            end = start + INTERVAL_SECONDS[price["recurring"]["interval"]]
            invoice = invoice_object(
                subscription_id,
                billing_reason="subscription_cycle",
                amount=price["unit_amount"],
                currency=price["currency"],
                period_start=start,
                period_end=end,
                metadata=subscription["metadata"],
                customer_id=subscription["customer"],
                price_id=price["id"],
                paid=paid,
            )
            self._state.invoices[invoice["id"]] = invoice
            subscription["latest_invoice"] = invoice["id"]
            if paid:
                item.update(current_period_start=start, current_period_end=end)
            else:
                subscription["status"] = "past_due"
            return copy.deepcopy(invoice)

    # --- request handling (called from server threads) --------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request; ``headers`` in any capitalization."""
        headers = {name.lower(): value for name, value in headers.items()}
        params = _parse_form(body) if method in ("POST", "DELETE") else {}
        record: dict[str, Any] = {
            "method": method,
            "path": path,
            "params": params,
            "idempotency_key": headers.get("idempotency-key"),
            "stripe_version": headers.get("stripe-version"),
            "status": None,
        }
        is_api = path.startswith("/v1/")
        with self._lock:
            if is_api:
                self._state.requests.append(record)
            faults = self._faults
            hang = faults.hang if is_api else 0.0
            injected = faults.take_failure(path) if is_api else None
        if hang:
            self._stopping.wait(hang)
        if injected is not None:
            response: Response = (
                injected,
                _error_body("api_error", "Injected fault from the Stripe double."),
                {},
            )
        else:
            response = self._authorized(method, path, headers, params)
        with self._lock:
            record["status"] = response[0]
        return response

    def _authorized(
        self, method: str, path: str, headers: Mapping[str, str], params: dict[str, Any]
    ) -> Response:
        if path.startswith("/__double__/"):
            return self._control(method, path, params)
        auth = headers.get("authorization") or ""
        key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if not key:
            return 401, _error_body("invalid_request_error", "You did not provide an API key."), {}
        if self.api_key is not None and key != self.api_key:
            return (
                401,
                _error_body(
                    "invalid_request_error", f"Invalid API Key provided: {key[:8]}****{key[-4:]}"
                ),
                {},
            )
        idem_key = headers.get("idempotency-key") if method == "POST" else None
        route = f"{method} {path}"
        with self._lock:  # one request at a time: concurrent same-key creates get one session
            if idem_key is not None and idem_key in self._state.idempotency:
                first_route, first_params, status, body = self._state.idempotency[idem_key]
                if first_route != route or first_params != params:
                    return (
                        400,
                        _error_body(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other "
                            "than '" + idem_key + "' if you meant to execute a different "
                            "request.",
                        ),
                        {},
                    )
                return status, copy.deepcopy(body), {"Idempotent-Replayed": "true"}
            status, body = self._route(method, path, params)
            if idem_key is not None and status < 400:
                self._state.idempotency[idem_key] = (route, params, status, copy.deepcopy(body))
            return status, body, {}

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["v1", "checkout", "sessions"]:
            if len(parts) == 3 and method == "POST":
                return self._create_session(params)
            if len(parts) == 4 and method == "GET":
                return self._get("checkout.session", self._state.sessions, parts[3])
            if len(parts) == 5 and parts[4] == "expire" and method == "POST":
                return self._expire(parts[3])
        if parts[:2] == ["v1", "subscriptions"] and len(parts) == 3:
            if method == "GET":
                return self._get("subscription", self._state.subscriptions, parts[2])
            if method == "POST":
                return self._update_subscription(parts[2], params)
            if method == "DELETE":
                return self._cancel_subscription(parts[2])
        return 404, _error_body(
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {path}).",
        )

    def _create_session(self, params: dict[str, Any]) -> tuple[int, Any]:
        mode = params.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            return 400, _error_body(
                "invalid_request_error", "Missing required param: mode.", param="mode"
            )
        line_items = params.get("line_items")
        if not isinstance(line_items, list) or len(line_items) != 1:
            return 400, _error_body(
                "invalid_request_error",
                "The double supports exactly one line item.",
                param="line_items",
            )
        item = line_items[0] if isinstance(line_items[0], dict) else {}
        price = self._prices.get(str(item.get("price")))
        if price is None:
            return 400, _error_body(
                "invalid_request_error",
                f"No such price: '{item.get('price')}'",
                code="resource_missing",
                param="line_items[0][price]",
            )
        try:
            quantity = int(item.get("quantity", "1"))
        except ValueError:
            quantity = 0
        if quantity < 1:
            return 400, _error_body(
                "invalid_request_error", "Invalid integer.", param="line_items[0][quantity]"
            )
        if not params.get("success_url"):
            return 400, _error_body(
                "invalid_request_error",
                "Missing required param: success_url.",
                param="success_url",
            )
        session_id = _new_id("cs_test_", 58)
        now = int(time.time())
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else {}
        subscription_data = params.get("subscription_data")
        sub_metadata = (
            subscription_data.get("metadata") if isinstance(subscription_data, dict) else None
        )
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": mode,
            "status": "open",
            "payment_status": "unpaid",
            "url": f"{self.url}/c/pay/{session_id}",
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "customer": None,
            "customer_email": params.get("customer_email"),
            "subscription": None,
            "invoice": None,
            "metadata": metadata,
            "amount_subtotal": price.unit_amount * quantity,
            "amount_total": price.unit_amount * quantity,
            "currency": price.currency,
            "created": now,
            "expires_at": now + 86_400,
            "livemode": False,
        }
        self._state.sessions[session_id] = session
        self._state.session_extras[session_id] = {
            "price": price,
            "subscription_metadata": sub_metadata if isinstance(sub_metadata, dict) else {},
        }
        return 200, copy.deepcopy(session)

    def _get(self, kind: str, table: dict[str, dict[str, Any]], object_id: str) -> tuple[int, Any]:
        obj = table.get(object_id)
        if obj is None:
            return 404, _missing(kind, object_id)
        return 200, copy.deepcopy(obj)

    def _expire(self, session_id: str) -> tuple[int, Any]:
        session = self._state.sessions.get(session_id)
        if session is None:
            return 404, _missing("checkout.session", session_id)
        if session["status"] != "open":
            return 400, _error_body(
                "invalid_request_error",
                'Only Checkout Sessions with a status in ["open"] can be expired. This '
                f"Checkout Session has a status of `{session['status']}`.",
            )
        session.update(status="expired", url=None)
        return 200, copy.deepcopy(session)

    def _update_subscription(self, sub_id: str, params: dict[str, Any]) -> tuple[int, Any]:
        subscription = self._state.subscriptions.get(sub_id)
        if subscription is None:
            return 404, _missing("subscription", sub_id)
        if subscription["status"] == "canceled" and set(params) - {"metadata"}:
            return 400, _error_body(
                "invalid_request_error",
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        if "cancel_at_period_end" in params:
            cancel = params["cancel_at_period_end"] == "true"
            item = subscription["items"]["data"][0]
            subscription.update(
                cancel_at_period_end=cancel,
                cancel_at=item["current_period_end"] if cancel else None,
                canceled_at=int(time.time()) if cancel else None,
            )
        if isinstance(params.get("metadata"), dict):
            for key, value in params["metadata"].items():
                if value == "":
                    subscription["metadata"].pop(key, None)
                else:
                    subscription["metadata"][key] = value
        return 200, copy.deepcopy(subscription)

    def _cancel_subscription(self, sub_id: str) -> tuple[int, Any]:
        subscription = self._state.subscriptions.get(sub_id)
        if subscription is None or subscription["status"] == "canceled":
            # Stripe words a second cancel as if the subscription did not exist.
            return 404, _missing("subscription", sub_id)
        now = int(time.time())
        subscription.update(status="canceled", canceled_at=now, ended_at=now)
        return 200, copy.deepcopy(subscription)

    def _control(self, method: str, path: str, params: dict[str, Any]) -> Response:
        """Double-only endpoints to drive a double running as a separate process."""
        parts = path.strip("/").split("/")
        if method == "POST" and parts[1:] == ["faults"]:
            self.fail_next(
                int(params.get("fail_next", 1)),
                int(params.get("status", 500)),
                str(params.get("path", "/v1/")),
            )
            return 200, {"ok": True}, {}
        if method == "POST" and len(parts) == 4 and parts[1::2] == ["sessions", "complete"]:
            try:
                return 200, self.complete_session(parts[2]), {}
            except (KeyError, ValueError) as exc:
                return 400, {"error": str(exc)}, {}
        return 404, {"error": "not found"}, {}


# --- events and signatures --------------------------------------------------------------


def make_event(
    type: str,
    data_object: Mapping[str, Any],
    event_id: str | None = None,
    created: int | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A v1 (snapshot) event as Stripe POSTs it to a webhook endpoint."""
    data: dict[str, Any] = {"object": copy.deepcopy(dict(data_object))}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    return {
        "id": event_id or _new_id("evt_"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The exact request body (what the signature covers)."""
    return json.dumps(event, indent=2).encode()


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value ``t=...,v1=...`` for ``payload``, as Stripe
    computes it (HMAC-SHA256 over ``"{t}.{payload}"`` with the endpoint secret)."""
    return stripe.WebhookSignature.generate_signature_header(
        payload.decode("utf-8"), secret, timestamp=timestamp
    )


def signed_webhook(
    event: Mapping[str, Any], secret: str, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` of the POST Stripe makes to the endpoint for ``event``."""
    body = encode_event(event)
    return body, {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": sign_payload(body, secret, timestamp),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }


def checkout_session_completed(
    session: Mapping[str, Any], event_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """``checkout.session.completed`` for a session (e.g. from ``complete_session``)."""
    return make_event("checkout.session.completed", session, event_id, created)


def checkout_async_payment_succeeded(
    session: Mapping[str, Any], event_id: str | None = None
) -> dict[str, Any]:
    return make_event(
        "checkout.session.async_payment_succeeded",
        {**session, "payment_status": "paid"},
        event_id,
    )


def checkout_async_payment_failed(
    session: Mapping[str, Any], event_id: str | None = None
) -> dict[str, Any]:
    return make_event(
        "checkout.session.async_payment_failed",
        {**session, "payment_status": "unpaid"},
        event_id,
    )


def invoice_object(
    subscription_id: str,
    *,
    billing_reason: str = "subscription_cycle",
    amount: int,
    currency: str = "usd",
    period_start: int | None = None,
    period_end: int | datetime,
    metadata: Mapping[str, str] | None = None,
    customer_id: str | None = None,
    price_id: str = "price_test",
    paid: bool = True,
    invoice_id: str | None = None,
) -> dict[str, Any]:
    """An invoice of a subscription, shaped like API 2025-03-31+ (``parent``, line periods).

    ``invoice.period_*`` is the *previous* period, as on real subscription invoices; the paid
    period is the line's ``period``.
    """
    end = int(period_end.timestamp()) if isinstance(period_end, datetime) else period_end
    start = period_start if period_start is not None else end - INTERVAL_SECONDS["month"]
    now = int(time.time())
    meta = dict(metadata or {})
    line = {
        "id": _new_id("il_"),
        "object": "line_item",
        "amount": amount,
        "currency": currency.lower(),
        "description": f"1 x plan (at {amount / 100:.2f} / period)",
        "metadata": dict(meta),
        "period": {"start": start, "end": end},
        "pricing": {"type": "price_details", "price_details": {"price": price_id}},
        "quantity": 1,
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "subscription": subscription_id,
                "subscription_item": _new_id("si_"),
                "proration": False,
                "invoice_item": None,
            },
            "invoice_item_details": None,
        },
    }
    return {
        "id": invoice_id or _new_id("in_"),
        "object": "invoice",
        "billing_reason": billing_reason,
        "customer": customer_id or _new_id("cus_"),
        "currency": currency.lower(),
        "amount_due": amount,
        "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount,
        "status": "paid" if paid else "open",
        "attempt_count": 1,
        "created": now,
        "period_start": start if billing_reason == "subscription_create" else start - 1,
        "period_end": start,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"subscription": subscription_id, "metadata": dict(meta)},
        },
        "lines": {"object": "list", "data": [line], "has_more": False, "total_count": 1},
        "livemode": False,
    }


def invoice_paid(
    subscription_id: str,
    *,
    period_end: int | datetime,
    amount_paid: int,
    currency: str = "usd",
    billing_reason: str = "subscription_cycle",
    metadata: Mapping[str, str] | None = None,
    customer_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """``invoice.paid`` (a renewal by default) paying the period that ends at ``period_end``."""
    invoice = invoice_object(
        subscription_id,
        billing_reason=billing_reason,
        amount=amount_paid,
        currency=currency,
        period_end=period_end,
        metadata=metadata,
        customer_id=customer_id,
    )
    return make_event("invoice.paid", invoice, event_id)


def invoice_paid_for(invoice: Mapping[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """``invoice.paid`` for an invoice of the double (``latest_invoice``/``renew_subscription``)."""
    return make_event("invoice.paid", invoice, event_id)


def invoice_payment_failed(
    subscription_id: str,
    *,
    amount_due: int,
    currency: str = "usd",
    billing_reason: str = "subscription_cycle",
    metadata: Mapping[str, str] | None = None,
    period_end: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    invoice = invoice_object(
        subscription_id,
        billing_reason=billing_reason,
        amount=amount_due,
        currency=currency,
        period_end=period_end or int(time.time()) + INTERVAL_SECONDS["month"],
        metadata=metadata,
        paid=False,
    )
    return make_event("invoice.payment_failed", invoice, event_id)


def subscription_updated(
    subscription: Mapping[str, Any],
    *,
    cancel_at_period_end: bool = True,
    event_id: str | None = None,
) -> dict[str, Any]:
    """``customer.subscription.updated`` after (un)scheduling the end at the period's end."""
    obj = copy.deepcopy(dict(subscription))
    period_end = _current_period_end(obj)
    obj.update(
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=period_end if cancel_at_period_end else None,
        canceled_at=int(time.time()) if cancel_at_period_end else None,
    )
    previous = {
        "cancel_at_period_end": not cancel_at_period_end,
        "cancel_at": None if cancel_at_period_end else period_end,
    }
    return make_event("customer.subscription.updated", obj, event_id, None, previous)


def subscription_deleted(
    subscription: Mapping[str, Any], event_id: str | None = None
) -> dict[str, Any]:
    """``customer.subscription.deleted``: the subscription ended (now or at period end)."""
    now = int(time.time())
    obj = {**copy.deepcopy(dict(subscription)), "status": "canceled", "ended_at": now}
    obj.setdefault("canceled_at", now)
    return make_event("customer.subscription.deleted", obj, event_id)


def subscription_object(
    subscription_id: str | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    customer_id: str | None = None,
    current_period_end: int | None = None,
) -> dict[str, Any]:
    """A bare active subscription, for events about one the double never created."""
    now = int(time.time())
    end = current_period_end or now + INTERVAL_SECONDS["month"]
    return {
        "id": subscription_id or _new_id("sub_"),
        "object": "subscription",
        "customer": customer_id or _new_id("cus_"),
        "status": "active",
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": None,
        "ended_at": None,
        "metadata": dict(metadata or {}),
        "items": {
            "object": "list",
            "data": [
                {
                    "id": _new_id("si_"),
                    "object": "subscription_item",
                    "current_period_start": end - INTERVAL_SECONDS["month"],
                    "current_period_end": end,
                }
            ],
        },
        "livemode": False,
    }


# --- helpers --------------------------------------------------------------------------------


def _current_period_end(subscription: Mapping[str, Any]) -> int | None:
    items = (subscription.get("items") or {}).get("data") or []
    ends = [i.get("current_period_end") for i in items if isinstance(i, dict)]
    known = [e for e in ends if isinstance(e, int)]
    return max(known) if known else subscription.get("current_period_end")


def _new_id(prefix: str, length: int = 24) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _error_body(
    type: str, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type, "message": message}
    if code is not None:
        error["code"] = code
    if param is not None:
        error["param"] = param
    return {"error": error}


def _missing(kind: str, object_id: str) -> dict[str, Any]:
    return _error_body(
        "invalid_request_error", f"No such {kind}: '{object_id}'", code="resource_missing"
    )


_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def _parse_form(body: bytes) -> dict[str, Any]:
    """Decode Stripe's form encoding (``a[b][0][c]=v``) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
        match = _KEY.match(raw_key)
        if match is None:
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _handler_for(double: StripeDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(DoubleRequestHandler):
        def _serve(self) -> None:
            body = self.read_body()
            path = self.path.split("?", 1)[0]
            headers = dict(self.headers.items())
            status, payload, extra = double.handle(self.command, path, headers, body)
            data = json.dumps(payload).encode()
            self.send_body(
                status, data, "application/json", {"Request-Id": _new_id("req_", 14), **extra}
            )

        do_GET = do_POST = do_DELETE = _serve

    return Handler


def _parse_price(spec: str) -> Price:
    """``price_id=amount[:currency[:interval]]``"""
    price_id, _, rest = spec.partition("=")
    amount, currency, interval = ([*rest.split(":"), "usd", "month"])[:3]
    return Price(price_id, int(amount), currency.lower(), interval)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Stripe API double.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--price", action="append", default=[], help="price_id=amount[:currency[:interval]]"
    )
    args = parser.parse_args()
    double = StripeDouble([_parse_price(p) for p in args.price], host=args.host, port=args.port)
    double.start()
    print(f"Stripe double listening on {double.url}", flush=True)
    double.serve_until_signalled()


if __name__ == "__main__":
    main()
