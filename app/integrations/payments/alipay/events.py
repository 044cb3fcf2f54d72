"""Alipay async notifications: verification and the mapping to ``ProviderEvent``.

Async notifications (form-encoded POST) are verified with the SDK's ``verify`` (RSA2 over the
sorted ``k=v`` pairs minus ``sign`` and ``sign_type``); then this module checks what the SDK
does not: ``app_id``, ``seller_id`` (when ``ALIPAY_SELLER_ID`` is set), ``out_trade_no`` (our
32-hex order ref), ``total_amount`` and ``notify_id``. The service compares the amount with
the order.

================================  =========================================================
``trade_status``                  ``EventKind``
================================  =========================================================
TRADE_SUCCESS, TRADE_FINISHED     PAID (amount in fen, CNY, ``event_id`` = ``notify_id``)
TRADE_CLOSED                      PAYMENT_FAILED (closed unpaid)
WAIT_BUYER_PAY                    IGNORED
refund_fee == total_amount          REFUNDED (the whole payment returned)
other refund notifies             IGNORED (a partial refund, kept for audit)
anything else                     IGNORED
================================  =========================================================
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import parse_qsl

from app.integrations.payments.alipay.sdk import AliPay, AliPayException
from app.integrations.payments.base import (
    EventKind,
    InvalidWebhookError,
    ProviderEvent,
    WebhookRequest,
)

PROVIDER_NAME: Final = "alipay"
CURRENCY: Final = "CNY"
MAX_NOTIFY_BYTES: Final = 64 * 1024
BEIJING: Final = timezone(timedelta(hours=8))  # Alipay's clock: GMT+8, no DST
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
PAID_STATUSES: Final = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
REFUND_FIELDS: Final = ("refund_fee", "gmt_refund", "out_biz_no")
REQUIRED_NOTIFY_FIELDS: Final = (
    "notify_id",
    "app_id",
    "out_trade_no",
    "trade_no",
    "trade_status",
    "total_amount",
)
_ORDER_REF = re.compile(r"[0-9a-f]{32}")
_AMOUNT = re.compile(r"\d{1,9}(?:\.\d{1,2})?")


def verified_events(
    request: WebhookRequest, *, client: AliPay, app_id: str, seller_id: str | None
) -> list[ProviderEvent]:
    """Verify an async notify (RSA2, app/seller ids, order ref, amount) and map it."""
    params = _parse_notify(request.body)
    signature = params.pop("sign", "")
    if not signature:
        raise InvalidWebhookError("alipay notify without sign")
    if params.get("sign_type") != "RSA2":
        raise InvalidWebhookError("alipay notify sign_type is not RSA2")
    try:
        # The SDK pops sign_type and signs the rest sorted; give it a copy.
        verified = bool(client.verify(dict(params), signature))
    except (AliPayException, ValueError, TypeError):
        verified = False
    if not verified:
        raise InvalidWebhookError("alipay notify signature does not verify")

    missing = [name for name in REQUIRED_NOTIFY_FIELDS if not params.get(name)]
    if missing:
        raise InvalidWebhookError(f"alipay notify lacks {', '.join(missing)}")
    if params["app_id"] != app_id:
        raise InvalidWebhookError("alipay notify is for another app_id")
    if seller_id is not None and params.get("seller_id") != seller_id:
        raise InvalidWebhookError("alipay notify is for another seller_id")
    out_trade_no = params["out_trade_no"]
    order_id = _order_id(out_trade_no)
    if order_id is None:
        raise InvalidWebhookError("alipay notify out_trade_no is not one of our order refs")
    amount = _fen(params["total_amount"])
    if amount is None:
        raise InvalidWebhookError("alipay notify total_amount does not parse")

    status = params["trade_status"]
    refund = any(params.get(name) for name in REFUND_FIELDS)
    refund_fee = _fen(params.get("refund_fee") or "")
    if refund:
        # The whole amount returned takes back what the order bought; a partial refund
        # is recorded for audit only.
        kind = EventKind.REFUNDED if refund_fee == amount else EventKind.IGNORED
    elif status in PAID_STATUSES:
        kind = EventKind.PAID
    elif status == "TRADE_CLOSED":
        kind = EventKind.PAYMENT_FAILED
    else:  # WAIT_BUYER_PAY, or a status this code does not know
        kind = EventKind.IGNORED
    return [
        ProviderEvent(
            provider=PROVIDER_NAME,
            event_id=params["notify_id"],
            type=f"refund:{status}" if refund else status,
            kind=kind,
            order_id=order_id,
            provider_order_id=out_trade_no,
            amount=amount,
            currency=CURRENCY,
            occurred_at=_beijing_time(params.get("gmt_payment"))
            or _beijing_time(params.get("notify_time")),
            payload=params,
        )
    ]


def _fen(total_amount: str) -> int | None:
    """``"12.34"`` -> 1234; None when it is not a plain positive amount."""
    if not _AMOUNT.fullmatch(total_amount):
        return None
    try:
        fen = Decimal(total_amount) * 100
    except InvalidOperation:
        return None
    return int(fen) if fen == fen.to_integral_value() else None


def _order_id(out_trade_no: str) -> str | None:
    if not _ORDER_REF.fullmatch(out_trade_no):
        return None
    return str(uuid.UUID(hex=out_trade_no))


def _beijing_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        return None


def _parse_notify(body: bytes) -> dict[str, str]:
    if not body or len(body) > MAX_NOTIFY_BYTES:
        raise InvalidWebhookError("alipay notify body is empty or too large")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidWebhookError("alipay notify body is not a form") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        raise InvalidWebhookError("alipay notify repeats a parameter")
    return params
