"""Alipay (open platform, ``python-alipay-sdk``): precreate QR or page pay, RSA2 notify.

Requests are built and signed (RSA2 = SHA256withRSA over the sorted ``k=v`` pairs) by the
SDK's ``AliPay`` client; this module swaps in its own HTTP call (``ALIPAY_GATEWAY``, a
``requests`` timeout, error mapping) and Beijing-time request timestamps. Answers are only
trusted when their ``sign`` verifies with the Alipay public key.
Notifications are verified and mapped in ``events``; ``ALIPAY_*`` settings: ``settings``.

Gateway codes: ``10000`` success; ``20000`` and ``ACQ.SYSTEM_ERROR`` / ``isp.*`` ->
``TransientError``; every other code -> ``PermanentError``. Timeouts, connection errors and
HTTP 5xx -> ``TransientError``. Keys never appear in a message or a log line.

The SDK internals used here (the ``alipay.loggers`` stand-in, the ``build_body`` and
``verified_sync_response`` hooks, the private ``_verify_and_return_sync_response``) are pinned
by tests/integrations/payments/test_alipay_sdk_contract.py; the Alipay contract we rely on is
in docs/payments.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from app.errors import PermanentError, TransientError
from app.integrations.http import is_transient_status, request_faults
from app.integrations.payments.alipay.events import (
    BEIJING,
    CURRENCY,
    PAID_STATUSES,
    PROVIDER_NAME,
    TIME_FORMAT,
    _beijing_time,
    _fen,
    verified_events,
)
from app.integrations.payments.alipay.sdk import AliPay, AliPayException, AliPayValidationError
from app.integrations.payments.alipay.settings import (
    DEFAULT_GATEWAY,
    ENV_GATEWAY,
    ENV_MODE,
    ENV_PRIVATE_KEY,
    ENV_PUBLIC_KEY,
    MODES,
    _load_key,
    _pem,
    provider_kwargs,
)
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
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final[tuple[float, float]] = (3.05, 15.0)  # (connect, read) seconds
DEFAULT_TIMEOUT_EXPRESS: Final = "2h"  # an unpaid trade closes itself after this
SUCCESS_CODE: Final = "10000"
TRANSIENT_CODES: Final = frozenset({"20000"})
TRANSIENT_SUB_CODES: Final = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"})
TRADE_NOT_EXIST: Final = "ACQ.TRADE_NOT_EXIST"
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

    name = PROVIDER_NAME

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
        """Build from ``ALIPAY_*`` settings (``settings.provider_kwargs``)."""
        return cls(**provider_kwargs(env))

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
        return verified_events(
            request, client=self._client, app_id=self.app_id, seller_id=self.seller_id
        )

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


def _yuan(fen: int) -> str:
    """Minor units -> Alipay's ``total_amount``: yuan with exactly two decimals."""
    return str((Decimal(fen) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _subject(plan_name: str, billing_cycle: str) -> str:
    name = _SUBJECT_UNSAFE.sub(" ", plan_name).strip() or "plan"
    return f"VibeBox {name} ({billing_cycle})"[:256]
