"""WeChat Pay callbacks: verification (platform key, serial, fresh timestamp), decryption
of the ``AEAD_AES_256_GCM`` resource, and the mapping to ``ProviderEvent``."""

from __future__ import annotations

import binascii
import json
import logging
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from wechatpayv3.utils import aes_decrypt, rsa_verify

from app.integrations.payments.base import (
    EventKind,
    InvalidWebhookError,
    ProviderEvent,
    WebhookRequest,
)

log = logging.getLogger(__name__)

PROVIDER_NAME = "wechat"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
MAX_CLOCK_SKEW_SECONDS = 300  # |now - Wechatpay-Timestamp| allowed on callbacks
# Personal data of the payer; kept out of the audit payload.
_PRIVATE_FIELDS = ("payer", "user_received_account")

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def verified_events(
    request: WebhookRequest,
    *,
    platform_keys: Mapping[str, RSAPublicKey],
    now: float,
    api_v3_key: str,
    mchid: str,
    appid: str,
) -> list[ProviderEvent]:
    """Verify (platform key, accepted serial, fresh timestamp), decrypt, normalize.

    ``TRANSACTION.SUCCESS`` with ``trade_state`` SUCCESS is a payment; ``REFUND.SUCCESS``
    returning the whole amount is REFUNDED (a partial refund is recorded but IGNORED);
    every other verified notification is IGNORED, still recorded by its id.
    """
    headers = {str(k).lower(): str(v) for k, v in request.headers.items()}
    signature = headers.get("wechatpay-signature", "")
    timestamp = headers.get("wechatpay-timestamp", "")
    nonce = headers.get("wechatpay-nonce", "")
    serial = headers.get("wechatpay-serial", "")
    if not (signature and timestamp and nonce and serial):
        raise InvalidWebhookError("missing Wechatpay-Signature/Timestamp/Nonce/Serial")
    signature_type = headers.get("wechatpay-signature-type")
    if signature_type is not None and signature_type != SIGNATURE_TYPE:
        raise InvalidWebhookError(f"unsupported Wechatpay-Signature-Type {signature_type!r}")
    public_key = platform_keys.get(serial)
    if public_key is None:
        raise InvalidWebhookError(f"Wechatpay-Serial {serial[:64]!r} is not an accepted key")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise InvalidWebhookError("Wechatpay-Timestamp is not a unix timestamp")
    skew = now - int(timestamp)
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        raise InvalidWebhookError(f"Wechatpay-Timestamp is {skew:+.0f} s off (stale)")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWebhookError("body is not UTF-8") from None
    if not _verify(public_key, timestamp, nonce, text, signature):
        raise InvalidWebhookError("signature does not verify with the platform key")

    notification = _json_object(text)
    if notification is None:
        raise InvalidWebhookError("body is not a JSON object")
    event_id = notification.get("id")
    event_type = notification.get("event_type")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidWebhookError("notification has no id or event_type")
    resource = decrypt_resource(notification, api_v3_key)

    if resource.get("mchid") != mchid:
        raise InvalidWebhookError("notification is for another merchant (mchid)")
    transaction_event = event_type.startswith("TRANSACTION.")
    if (transaction_event or "appid" in resource) and resource.get("appid") != appid:
        raise InvalidWebhookError("notification is for another app (appid)")

    occurred_at = _parse_time(resource.get("success_time")) or _parse_time(
        notification.get("create_time")
    )
    payload = _public_payload(resource)
    out_trade_no = resource.get("out_trade_no")
    out_trade_no = out_trade_no if isinstance(out_trade_no, str) and out_trade_no else None

    if event_type == "TRANSACTION.SUCCESS" and resource.get("trade_state") == "SUCCESS":
        if out_trade_no is None:
            raise InvalidWebhookError("paid transaction has no out_trade_no")
        amount, currency = _amount(resource)
        if amount is None or currency is None:
            raise InvalidWebhookError("paid transaction has no amount.total/currency")
        return [
            ProviderEvent(
                provider=PROVIDER_NAME,
                event_id=event_id,
                type=event_type,
                kind=EventKind.PAID,
                order_id=_order_id(out_trade_no),
                provider_order_id=out_trade_no,
                amount=amount,
                currency=currency,
                occurred_at=occurred_at,
                payload=payload,
            )
        ]
    if event_type == "REFUND.SUCCESS" and resource.get("refund_status") == "SUCCESS":
        refund = _full_refund(resource)
        if out_trade_no is not None and refund is not None:
            return [
                ProviderEvent(
                    provider=PROVIDER_NAME,
                    event_id=event_id,
                    type=event_type,
                    kind=EventKind.REFUNDED,
                    order_id=_order_id(out_trade_no),
                    provider_order_id=out_trade_no,
                    amount=refund,
                    currency="CNY",
                    occurred_at=occurred_at,
                    payload=payload,
                )
            ]
    log.info("WeChat Pay notification %s (%s) ignored", event_id, event_type)
    return [
        ProviderEvent(
            provider=PROVIDER_NAME,
            event_id=event_id,
            type=event_type,
            kind=EventKind.IGNORED,
            order_id=_order_id(out_trade_no) if out_trade_no else None,
            provider_order_id=out_trade_no,
            occurred_at=occurred_at,
            payload=payload,
        )
    ]


def decrypt_resource(notification: dict[str, Any], api_v3_key: str) -> dict[str, Any]:
    resource = notification.get("resource")
    if notification.get("resource_type") != "encrypt-resource" or not isinstance(resource, dict):
        raise InvalidWebhookError("notification has no encrypted resource")
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise InvalidWebhookError("resource algorithm is not AEAD_AES_256_GCM")
    nonce = resource.get("nonce")
    ciphertext = resource.get("ciphertext")
    associated_data = resource.get("associated_data") or ""
    if not (isinstance(nonce, str) and nonce and isinstance(ciphertext, str) and ciphertext):
        raise InvalidWebhookError("resource has no nonce or ciphertext")
    if not isinstance(associated_data, str):
        raise InvalidWebhookError("resource associated_data is not a string")
    try:
        plaintext = aes_decrypt(
            nonce=nonce,
            ciphertext=ciphertext,
            associated_data=associated_data,
            apiv3_key=api_v3_key,
        )
    except (binascii.Error, ValueError, UnicodeError):
        plaintext = None
    if plaintext is None:
        raise InvalidWebhookError("resource does not decrypt (APIv3 key or tampered)")
    decoded = _json_object(plaintext)
    if decoded is None:
        raise InvalidWebhookError("decrypted resource is not a JSON object")
    return decoded


def _verify(key: RSAPublicKey, timestamp: str, nonce: str, body: str, signature: str) -> bool:
    try:
        return bool(rsa_verify(timestamp, nonce, body, signature, key))
    except (ValueError, TypeError, UnicodeError):
        return False


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _amount(data: Mapping[str, Any]) -> tuple[int | None, str | None]:
    amount = data.get("amount")
    if not isinstance(amount, dict):
        return None, None
    total = amount.get("total")
    currency = amount.get("currency")
    return (
        total if isinstance(total, int) and not isinstance(total, bool) else None,
        currency.upper() if isinstance(currency, str) and currency else None,
    )


def _order_id(out_trade_no: str) -> str | None:
    """Our order id from ``out_trade_no`` (the UUID's 32 hex chars); None if it is not ours."""
    if len(out_trade_no) != 32:
        return None
    try:
        return str(uuid.UUID(hex=out_trade_no))
    except ValueError:
        return None


def _parse_time(value: Any) -> datetime | None:
    """WeChat's RFC 3339 times, e.g. ``2018-06-08T10:34:56+08:00``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _public_payload(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _PRIVATE_FIELDS}


def _full_refund(resource: dict[str, Any]) -> int | None:
    """The refunded amount (fen) when a refund returns the whole payment, else None."""
    amount = resource.get("amount")
    if not isinstance(amount, dict):
        return None
    total, refund = amount.get("total"), amount.get("refund")
    if isinstance(total, int) and isinstance(refund, int) and refund == total > 0:
        return refund
    return None
