"""Stripe webhooks: signature verification and the mapping to ``ProviderEvent``.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import stripe

from app.integrations.payments.base import (
    EventKind,
    InvalidWebhookError,
    ProviderEvent,
    WebhookRequest,
)
from app.integrations.payments.fields import dict_at, find_header, int_at, list_at, str_at, upper

PROVIDER_NAME: Final = "stripe"
SIGNATURE_HEADER: Final = "Stripe-Signature"
PAID_STATUSES: Final = frozenset({"paid", "no_payment_required"})


def verified_events(request: WebhookRequest, webhook_secret: str) -> list[ProviderEvent]:
    """Verify the ``Stripe-Signature`` and map the event (see the module table)."""
    header = find_header(request.headers, SIGNATURE_HEADER)
    if not header:
        raise InvalidWebhookError(f"missing {SIGNATURE_HEADER} header")
    try:
        event = stripe.Webhook.construct_event(request.body, header, webhook_secret)
    except stripe.SignatureVerificationError as exc:
        # The SDK's message says which check failed; it never contains the secret.
        raise InvalidWebhookError(f"stripe signature: {exc.user_message}") from None
    except (ValueError, TypeError, AttributeError, KeyError):
        # ValueError covers undecodable UTF-8 and invalid JSON.
        raise InvalidWebhookError("stripe webhook body is not a JSON event") from None
    data = event.to_dict()
    event_id, event_type = str_at(data, "id"), str_at(data, "type")
    obj = dict_at(dict_at(data, "data"), "object")
    if not event_id or not event_type or not obj:
        raise InvalidWebhookError("stripe event without id, type or data.object")
    return [_map_event(event_id, event_type, _timestamp(data.get("created")), obj)]


def _map_event(
    event_id: str, event_type: str, occurred_at: datetime | None, obj: dict[str, Any]
) -> ProviderEvent:
    if event_type == "checkout.session.completed":
        if str_at(obj, "payment_status") in PAID_STATUSES:
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
        provider=PROVIDER_NAME,
        event_id=event_id,
        type=event_type,
        kind=EventKind.IGNORED,
        occurred_at=occurred_at,
        payload={"object": str_at(obj, "object"), "id": str_at(obj, "id")},
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
    amount = int_at(session, "amount_total")
    currency = upper(str_at(session, "currency"))
    return ProviderEvent(
        provider=PROVIDER_NAME,
        event_id=event_id,
        type=event_type,
        kind=kind,
        order_id=metadata.get("orderId") or str_at(session, "client_reference_id"),
        provider_order_id=str_at(session, "id"),
        provider_subscription_id=subscription_id,
        provider_customer_id=customer_id,
        amount=amount,
        currency=currency,
        occurred_at=occurred_at,
        payload={
            "source": source,
            "session_id": str_at(session, "id"),
            "status": str_at(session, "status"),
            "payment_status": str_at(session, "payment_status"),
            "mode": str_at(session, "mode"),
            "client_reference_id": str_at(session, "client_reference_id"),
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
    if str_at(invoice, "billing_reason") == "subscription_create":
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
    amount = int_at(invoice, "amount_paid" if paid else "amount_due")
    currency = upper(str_at(invoice, "currency"))
    period_end = _invoice_period_end(invoice)
    return ProviderEvent(
        provider=PROVIDER_NAME,
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
            "invoice_id": str_at(invoice, "id"),
            "billing_reason": str_at(invoice, "billing_reason"),
            "status": str_at(invoice, "status"),
            "metadata": metadata,
            "subscription": subscription_id,
            "customer": customer_id,
            "amount_paid": int_at(invoice, "amount_paid"),
            "amount_due": int_at(invoice, "amount_due"),
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
        provider=PROVIDER_NAME,
        event_id=event_id,
        type=event_type,
        kind=kind,
        order_id=metadata.get("orderId"),
        provider_subscription_id=str_at(subscription, "id"),
        provider_customer_id=customer_id,
        occurred_at=occurred_at,
        payload={
            "subscription": str_at(subscription, "id"),
            "status": str_at(subscription, "status"),
            "cancel_at_period_end": subscription.get("cancel_at_period_end") is True,
            "cancel_at": int_at(subscription, "cancel_at"),
            "canceled_at": int_at(subscription, "canceled_at"),
            "current_period_end": period_end.isoformat() if period_end else None,
            "metadata": metadata,
            "customer": customer_id,
        },
    )


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription id: ``parent.subscription_details`` (API 2025-03-31 and later) or
    the older top-level ``subscription``, else the subscription lines'."""
    details = dict_at(dict_at(invoice, "parent"), "subscription_details")
    found = _ref_id(details.get("subscription")) or _ref_id(invoice.get("subscription"))
    if found:
        return found
    for line in _subscription_lines(invoice):
        item_details = dict_at(dict_at(line, "parent"), "subscription_item_details")
        found = _ref_id(item_details.get("subscription")) or _ref_id(line.get("subscription"))
        if found:
            return found
    return None


def _invoice_metadata(invoice: dict[str, Any]) -> dict[str, str]:
    """The subscription metadata snapshot the invoice carries (where depends on API version)."""
    for details in (
        dict_at(dict_at(invoice, "parent"), "subscription_details"),
        dict_at(invoice, "subscription_details"),
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
    ends = [int_at(dict_at(line, "period"), "end") for line in _subscription_lines(invoice)]
    known = [end for end in ends if end is not None]
    return _timestamp(max(known)) if known else None


def _subscription_lines(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [line for line in list_at(dict_at(invoice, "lines"), "data") if isinstance(line, dict)]
    subscription_lines = [
        line
        for line in lines
        if str_at(dict_at(line, "parent"), "type") == "subscription_item_details"
        or str_at(line, "type") == "subscription"
    ]
    return subscription_lines or lines


def _subscription_period_end(subscription: dict[str, Any]) -> datetime | None:
    """``current_period_end``: per item since API 2025-03-31, top-level before."""
    ends = [
        int_at(item, "current_period_end")
        for item in list_at(dict_at(subscription, "items"), "data")
        if isinstance(item, dict)
    ]
    known = [end for end in ends if end is not None]
    if known:
        return _timestamp(max(known))
    return _timestamp(subscription.get("current_period_end"))


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in dict_at(obj, "metadata").items() if isinstance(v, str)}


def _ref_id(value: Any) -> str | None:
    """An expandable field: an id string, or the expanded object's id."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        return str_at(value, "id")
    return None


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None
