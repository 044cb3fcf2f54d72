"""Alipay (open platform, ``python-alipay-sdk``): precreate QR or page pay, RSA2 notify.

Requests are built and signed (RSA2 = SHA256withRSA over the sorted ``k=v`` pairs) by the
SDK's ``AliPay`` client; this module swaps in its own HTTP call (``ALIPAY_GATEWAY``, a
``requests`` timeout, error mapping) and Beijing-time request timestamps. Answers are only
trusted when their ``sign`` verifies with the Alipay public key.

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

Gateway codes: ``10000`` success; ``20000`` and ``ACQ.SYSTEM_ERROR`` / ``isp.*`` ->
``TransientError``; every other code -> ``PermanentError``. Timeouts, connection errors and
HTTP 5xx -> ``TransientError``. Keys never appear in a message or a log line.

The SDK internals used here (the ``alipay.loggers`` stand-in, the ``build_body`` and
``verified_sync_response`` hooks, the private ``_verify_and_return_sync_response``) are pinned
by tests/integrations/payments/test_alipay_sdk_contract.py; the Alipay contract we rely on is
in docs/payments.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import types
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import requests
from Cryptodome.PublicKey import RSA

from app.errors import PermanentError, TransientError
from app.integrations.http import is_transient_status, request_faults
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
)

# ``alipay.loggers`` runs ``logging.config.dictConfig()`` at import time: that closes every
# logging handler the process has already installed and adds an unfiltered DEBUG console
# handler. Hand the SDK a plain logger instead when we are the first to import it.
if "alipay" not in sys.modules:
    _sdk_loggers = types.ModuleType("alipay.loggers")
    _sdk_loggers.logger = logging.getLogger("python-alipay-sdk")  # type: ignore[attr-defined]
    sys.modules.setdefault("alipay.loggers", _sdk_loggers)

from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError

log = logging.getLogger(__name__)

ENV_APP_ID: Final = "ALIPAY_APP_ID"
ENV_PRIVATE_KEY: Final = "ALIPAY_PRIVATE_KEY"
ENV_PUBLIC_KEY: Final = "ALIPAY_PUBLIC_KEY"
ENV_SELLER_ID: Final = "ALIPAY_SELLER_ID"
ENV_GATEWAY: Final = "ALIPAY_GATEWAY"
ENV_MODE: Final = "ALIPAY_MODE"

DEFAULT_GATEWAY: Final = "https://openapi.alipay.com/gateway.do"
DEFAULT_TIMEOUT: Final[tuple[float, float]] = (3.05, 15.0)  # (connect, read) seconds
DEFAULT_TIMEOUT_EXPRESS: Final = "2h"  # an unpaid trade closes itself after this
MODES: Final = ("precreate", "page")
CURRENCY: Final = "CNY"
MAX_NOTIFY_BYTES: Final = 64 * 1024

BEIJING: Final = timezone(timedelta(hours=8))  # Alipay's clock: GMT+8, no DST
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"

SUCCESS_CODE: Final = "10000"
TRANSIENT_CODES: Final = frozenset({"20000"})
TRANSIENT_SUB_CODES: Final = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"})
TRADE_NOT_EXIST: Final = "ACQ.TRADE_NOT_EXIST"
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
_SUBJECT_UNSAFE = re.compile(r"[/=&\s]+")  # Alipay rejects / = & in subject


class _GatewayClient(AliPay):
    """The SDK's signer pointed at our gateway, with a timeout on every call.

    The SDK itself calls ``urlopen`` on a hard-wired gateway and stamps requests with the
    server's local time; Alipay reads ``timestamp`` as Beijing time.
    """

    def __init__(
        self,
        *,
        gateway: str,
        timeout: tuple[float, float],
        session: requests.Session,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._gateway = gateway
        self._timeout = timeout
        self._session = session

    @property
    def gateway(self) -> str:
        return str(self._gateway)

    def build_body(self, method: str, biz_content: Any = None, **kwargs: Any) -> Any:
        data = super().build_body(method, biz_content, **kwargs)
        data["timestamp"] = datetime.now(BEIJING).strftime(TIME_FORMAT)
        return data

    def verified_sync_response(self, data: dict[str, Any], response_type: str) -> dict[str, Any]:
        method = str(data.get("method"))
        url = f"{self._gateway}?{self.sign_data(data)}"
        # The URL carries the signed request: request_faults never lets it reach a message.
        with request_faults(
            f"Alipay {method}", "Alipay", timeout=self._timeout, url_setting="ALIPAY_GATEWAY"
        ):
            response = self._session.get(url, timeout=self._timeout)
        status = response.status_code
        if is_transient_status(status):
            raise TransientError(
                f"Alipay {method}: HTTP {status}", safe_message="Alipay is temporarily failing."
            )
        if status != 200:
            raise PermanentError(
                f"Alipay {method}: HTTP {status}", safe_message="Alipay refused the request."
            )
        return self._parse(method, response.content, response_type)

    def _parse(self, method: str, content: bytes, response_type: str) -> dict[str, Any]:
        unexpected = TransientError(
            f"Alipay {method}: unexpected answer", safe_message="Alipay gave an unexpected answer."
        )
        try:
            raw = content.decode("utf-8")
            document = json.loads(raw)
        except ValueError:
            raise unexpected from None
        if not isinstance(document, dict):
            raise unexpected
        body = document.get(response_type) or document.get("error_response")
        if not isinstance(body, dict):
            raise unexpected
        if not document.get("sign") or "error_response" in document:
            # Gateway rejections (bad app id, bad signature...) come unsigned: an error at
            # best, never a result we act on.
            if str(body.get("code")) == SUCCESS_CODE:
                raise PermanentError(
                    f"Alipay {method}: unsigned success answer",
                    safe_message="Alipay gave an answer that could not be verified.",
                )
            return body
        try:
            verified = self._verify_and_return_sync_response(raw, response_type)
        except (AliPayValidationError, AliPayException, ValueError, TypeError):
            raise PermanentError(
                f"Alipay {method}: answer signature does not verify (check {ENV_PUBLIC_KEY})",
                safe_message="Alipay gave an answer that could not be verified.",
            ) from None
        if not isinstance(verified, dict):
            raise unexpected
        return verified


class AlipayProvider:
    """``PaymentProvider`` for Alipay face-to-face precreate (QR) or computer page pay."""

    name = "alipay"

    def __init__(
        self,
        *,
        app_id: str,
        app_private_key: str,
        alipay_public_key: str,
        seller_id: str | None = None,
        gateway: str = DEFAULT_GATEWAY,
        mode: str = "precreate",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        timeout_express: str = DEFAULT_TIMEOUT_EXPRESS,
        session: requests.Session | None = None,
    ) -> None:
        if mode not in MODES:
            raise ProviderNotConfiguredError(
                f"{ENV_MODE} must be one of {', '.join(MODES)}, not {mode!r}"
            )
        if urlsplit(gateway).scheme not in ("http", "https") or not urlsplit(gateway).netloc:
            raise ProviderNotConfiguredError(f"{ENV_GATEWAY} must be an http(s) URL")
        private_key = _load_key(app_private_key, ENV_PRIVATE_KEY, private=True)
        public_key = _load_key(alipay_public_key, ENV_PUBLIC_KEY, private=False)
        if private_key.n == public_key.n:
            raise ProviderNotConfiguredError(
                f"{ENV_PUBLIC_KEY} is the app's own public key; use the Alipay public key "
                "shown in the Alipay console"
            )
        self.app_id = app_id
        self.seller_id = seller_id or None
        self.mode = mode
        self.timeout_express = timeout_express
        self._client = _GatewayClient(
            gateway=gateway,
            timeout=timeout,
            session=session or requests.Session(),
            appid=app_id,
            app_private_key_string=_pem(private_key),
            alipay_public_key_string=_pem(public_key),
            sign_type="RSA2",
        )

    def __repr__(self) -> str:
        return f"AlipayProvider(app_id={self.app_id!r}, mode={self.mode!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AlipayProvider:
        """Build from ``ALIPAY_*`` settings; ``ProviderNotConfiguredError`` names what is
        missing or invalid (never a key's content)."""
        app_id = (env.get(ENV_APP_ID) or "").strip()
        private_key = _setting_or_file(env, ENV_PRIVATE_KEY)
        public_key = _setting_or_file(env, ENV_PUBLIC_KEY)
        missing = [ENV_APP_ID] if not app_id else []
        if not private_key:
            missing.append(f"{ENV_PRIVATE_KEY} (or {ENV_PRIVATE_KEY}_FILE)")
        if not public_key:
            missing.append(f"{ENV_PUBLIC_KEY} (or {ENV_PUBLIC_KEY}_FILE)")
        if missing or private_key is None or public_key is None:
            raise ProviderNotConfiguredError(f"Alipay needs {', '.join(missing)}")
        return cls(
            app_id=app_id,
            app_private_key=private_key,
            alipay_public_key=public_key,
            seller_id=(env.get(ENV_SELLER_ID) or "").strip() or None,
            gateway=(env.get(ENV_GATEWAY) or "").strip() or DEFAULT_GATEWAY,
            mode=(env.get(ENV_MODE) or "").strip().lower() or "precreate",
        )

    # --- checkout ------------------------------------------------------------------------

    def create_order(self, request: CheckoutRequest) -> CheckoutSession:
        """Precreate a QR trade (``qr_code``) or sign a page-pay URL for ``request``.

        Idempotent per order: Alipay answers the same ``qr_code`` for the same
        ``out_trade_no`` and amount.
        """
        if request.currency.upper() != CURRENCY:
            raise PermanentError(
                f"Alipay charges CNY only; order {request.order_id} is in {request.currency}",
                safe_message="Alipay accepts payments in CNY only.",
            )
        if request.amount <= 0:
            raise PermanentError(
                f"Alipay cannot charge {request.amount} fen",
                safe_message="The order amount is not payable.",
            )
        out_trade_no = request.order_ref
        biz = {
            "subject": _subject(request.plan_name, request.billing_cycle),
            "out_trade_no": out_trade_no,
            "total_amount": _yuan(request.amount),
        }
        if self.mode == "page":
            query = self._client.api_alipay_trade_page_pay(
                return_url=request.return_url,
                notify_url=request.notify_url,
                timeout_express=self.timeout_express,
                **biz,
            )
            log.info("alipay page pay URL signed for order %s", request.order_id)
            return CheckoutSession(
                provider_order_id=out_trade_no, checkout_url=f"{self._client.gateway}?{query}"
            )
        body = self._call(
            "alipay.trade.precreate",
            lambda: self._client.api_alipay_trade_precreate(
                notify_url=request.notify_url, timeout_express=self.timeout_express, **biz
            ),
        )
        qr_code = body.get("qr_code")
        if not isinstance(qr_code, str) or not qr_code:
            raise TransientError(
                "Alipay alipay.trade.precreate: success without qr_code",
                safe_message="Alipay gave an unexpected answer.",
            )
        if body.get("out_trade_no") not in (None, out_trade_no):
            raise PermanentError(
                "Alipay alipay.trade.precreate: answer is for another out_trade_no",
                safe_message="Alipay gave an unexpected answer.",
            )
        log.info("alipay precreate ok for order %s", request.order_id)
        return CheckoutSession(provider_order_id=out_trade_no, qr_code_url=qr_code)

    # --- notifications -------------------------------------------------------------------

    def handle_callback(self, request: WebhookRequest) -> list[ProviderEvent]:
        """Verify an async notify (RSA2, app/seller ids, order ref, amount) and map it."""
        params = _parse_notify(request.body)
        signature = params.pop("sign", "")
        if not signature:
            raise InvalidWebhookError("alipay notify without sign")
        if params.get("sign_type") != "RSA2":
            raise InvalidWebhookError("alipay notify sign_type is not RSA2")
        try:
            # The SDK pops sign_type and signs the rest sorted; give it a copy.
            verified = bool(self._client.verify(dict(params), signature))
        except (AliPayException, ValueError, TypeError):
            verified = False
        if not verified:
            raise InvalidWebhookError("alipay notify signature does not verify")

        missing = [name for name in REQUIRED_NOTIFY_FIELDS if not params.get(name)]
        if missing:
            raise InvalidWebhookError(f"alipay notify lacks {', '.join(missing)}")
        if params["app_id"] != self.app_id:
            raise InvalidWebhookError("alipay notify is for another app_id")
        if self.seller_id is not None and params.get("seller_id") != self.seller_id:
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
                provider=self.name,
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

    def ack(self) -> WebhookReply:
        return WebhookReply(status=200, body="success", content_type="text/plain")

    def nack(self, message: str) -> WebhookReply:
        # Alipay retries anything but the bare word "success"; the reason stays in our logs.
        return WebhookReply(status=400, body="failure", content_type="text/plain")

    # --- reconciliation and cancellation ---------------------------------------------------

    def query_order(self, order: OrderRef) -> OrderQuery:
        """``alipay.trade.query``: paid -> PAID with a synthetic event; see ``OrderState``."""
        out_trade_no = order.provider_order_id or order.order_ref
        body = self._call(
            "alipay.trade.query",
            lambda: self._client.api_alipay_trade_query(out_trade_no=out_trade_no),
            tolerate=frozenset({TRADE_NOT_EXIST}),
        )
        if body.get("sub_code") == TRADE_NOT_EXIST:
            return OrderQuery(OrderState.UNKNOWN)
        if body.get("out_trade_no") not in (None, out_trade_no):
            raise PermanentError(
                "Alipay alipay.trade.query: answer is for another out_trade_no",
                safe_message="Alipay gave an unexpected answer.",
            )
        status = body.get("trade_status")
        if status == "WAIT_BUYER_PAY":
            return OrderQuery(OrderState.PENDING)
        if status == "TRADE_CLOSED":
            return OrderQuery(OrderState.FAILED)
        if status not in PAID_STATUSES:
            log.warning("alipay query for order %s: unknown trade_status", order.order_id)
            return OrderQuery(OrderState.UNKNOWN)
        trade_no = body.get("trade_no")
        amount = _fen(str(body.get("total_amount", "")))
        if not isinstance(trade_no, str) or not trade_no or amount is None:
            raise TransientError(
                "Alipay alipay.trade.query: paid answer without trade_no / total_amount",
                safe_message="Alipay gave an unexpected answer.",
            )
        event = ProviderEvent(
            provider=self.name,
            event_id=f"query:{out_trade_no}:{trade_no}",
            type=f"query:{status}",
            kind=EventKind.PAID,
            order_id=order.order_id,
            provider_order_id=out_trade_no,
            amount=amount,
            currency=CURRENCY,
            occurred_at=_beijing_time(body.get("send_pay_date")),
            payload=body,
        )
        return OrderQuery(OrderState.PAID, event)

    def cancel_order(self, order: OrderRef) -> None:
        """``alipay.trade.close``; a trade Alipay does not know (never scanned) is a no-op.

        A precreated QR that nobody scanned cannot be closed: it stays payable until
        ``timeout_express`` runs out.
        """
        out_trade_no = order.provider_order_id or order.order_ref
        self._call(
            "alipay.trade.close",
            lambda: self._client.api_alipay_trade_close(out_trade_no=out_trade_no),
            tolerate=frozenset({TRADE_NOT_EXIST}),
        )

    def cancel_subscription(self, provider_subscription_id: str, *, at_period_end: bool) -> None:
        """Alipay payments here are one-off: nothing recurs at the provider."""

    # --- helpers ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        call: Callable[[], Any],
        *,
        tolerate: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Run one SDK call; a code other than 10000 becomes an error unless tolerated."""
        body = call()
        if not isinstance(body, dict):
            raise TransientError(
                f"Alipay {method}: unexpected answer",
                safe_message="Alipay gave an unexpected answer.",
            )
        code = str(body.get("code", ""))
        sub_code = str(body.get("sub_code", ""))
        if code == SUCCESS_CODE or sub_code in tolerate:
            return body
        detail = f"Alipay {method}: {code} {sub_code} {body.get('sub_msg') or ''}".strip()
        if (
            code in TRANSIENT_CODES
            or sub_code in TRANSIENT_SUB_CODES
            or sub_code.startswith("isp.")
        ):
            raise TransientError(detail, safe_message="Alipay is temporarily failing.")
        raise PermanentError(detail, safe_message="Alipay refused the request.")


# --- parsing and formatting ----------------------------------------------------------------


def _setting_or_file(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    if value:
        return value
    path = (env.get(f"{name}_FILE") or "").strip()
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderNotConfiguredError(
            f"{name}_FILE cannot be read ({type(exc).__name__})"
        ) from None


def _load_key(text: str, name: str, *, private: bool) -> RSA.RsaKey:
    """An RSA key given as PEM, PEM with literal ``\\n``, or bare base64 DER (as the Alipay
    console shows keys)."""
    text = text.strip().replace("\\n", "\n")
    what = "an RSA private key" if private else "an RSA public key"
    try:
        if "-----BEGIN" in text:
            key = RSA.import_key(text)
        else:
            key = RSA.import_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, IndexError, TypeError, binascii.Error):
        raise ProviderNotConfiguredError(f"{name} is not {what}") from None
    if key.has_private() != private:
        raise ProviderNotConfiguredError(f"{name} is not {what}")
    if key.size_in_bits() < 2048:
        raise ProviderNotConfiguredError(f"{name} is shorter than 2048 bits (RSA2 needs 2048)")
    return key


def _pem(key: RSA.RsaKey) -> str:
    exported = key.export_key(format="PEM", pkcs=8) if key.has_private() else key.export_key()
    return exported.decode("ascii") if isinstance(exported, bytes) else str(exported)


def _yuan(fen: int) -> str:
    """Minor units -> Alipay's ``total_amount``: yuan with exactly two decimals."""
    return str((Decimal(fen) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _fen(total_amount: str) -> int | None:
    """``"12.34"`` -> 1234; None when it is not a plain positive amount."""
    if not _AMOUNT.fullmatch(total_amount):
        return None
    try:
        fen = Decimal(total_amount) * 100
    except InvalidOperation:
        return None
    return int(fen) if fen == fen.to_integral_value() else None


def _subject(plan_name: str, billing_cycle: str) -> str:
    name = _SUBJECT_UNSAFE.sub(" ", plan_name).strip() or "plan"
    return f"VibeBox {name} ({billing_cycle})"[:256]


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
