"""WeChat Pay API v3: Native pay (a QR code), verified and decrypted payment callbacks.

Crypto comes from the ``wechatpayv3`` SDK's own helpers (``wechatpayv3.utils``):
``build_authorization`` signs every request (``WECHATPAY2-SHA256-RSA2048`` over
``METHOD\\nPATH?QUERY\\nTS\\nNONCE\\nBODY\\n``), ``rsa_verify`` checks the platform's RSA-SHA256
signature over ``TS\\nNONCE\\nBODY\\n`` on responses and callbacks, and ``aes_decrypt`` opens the
``AEAD_AES_256_GCM`` resource with the APIv3 key.

We do not use the SDK's ``WeChatPay``/``Core`` client itself, because:

- its gateway is a hard-coded private attribute (``Core._gate_way``): no custom base URL;
- on any ``Wechatpay-Serial`` other than its single ``public_key_id`` it silently downloads
  ``/v3/certificates`` (a network call while verifying a callback; in certificate mode also at
  construction), and it accepts only one key id, so no key rotation;
- it neither checks timestamp freshness nor tells one failure from another (``None`` or a bare
  ``Exception``), and it uses module-level ``requests`` calls without a session.

So verification here never touches the network: the platform public key(s) (public-key mode)
or pre-placed platform certificates are loaded once, keyed by their id/serial.

Nothing returned is an SDK object; ``requests`` errors become ``TransientError`` or
``PermanentError``. No key (merchant private key, APIv3 key) ever appears in a message or log.
Callbacks: ``events``; settings: ``settings``. What we rely on from WeChat Pay: docs/payments.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from wechatpayv3.utils import build_authorization

from app.errors import PermanentError, TransientError
from app.integrations.http import is_transient_status, request_faults
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
from app.integrations.payments.wechat.events import (
    PROVIDER_NAME,
    _amount,
    _order_id,
    _parse_time,
    _public_payload,
    _verify,
    verified_events,
)
from app.integrations.payments.wechat.settings import (
    API_V3_KEY_LENGTH,
    DEFAULT_API_BASE,
    _load_platform_key,
    _load_private_key,
    provider_kwargs,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)  # (connect, read) seconds
DESCRIPTION_MAX_CHARS = 127  # WeChat's limit on ``description``

# trade_state -> our view (query_order). REFUND: the money was paid and (partly) returned
# through the merchant platform; provisioning for it would be wrong, so it counts as failed.
_TRADE_STATES = {
    "SUCCESS": OrderState.PAID,
    "NOTPAY": OrderState.PENDING,
    "USERPAYING": OrderState.PENDING,
    "ACCEPT": OrderState.PENDING,
    "CLOSED": OrderState.FAILED,
    "REVOKED": OrderState.FAILED,
    "PAYERROR": OrderState.FAILED,
    "REFUND": OrderState.FAILED,
}


class _ApiRefusal(PermanentError):
    """A 4xx answer; ``code`` is WeChat's error code (``ORDER_NOT_EXIST``, ...)."""

    def __init__(self, message: str, *, status: int, code: str, safe_message: str) -> None:
        super().__init__(message, safe_message=safe_message)
        self.status = status
        self.code = code


class WeChatPayProvider:
    """WeChat Pay v3 direct merchant (普通商户), Native pay."""

    name = PROVIDER_NAME

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        api_v3_key: str,
        merchant_private_key: str,
        merchant_cert_serial: str,
        platform_public_keys: Mapping[str, str],
        api_base: str = DEFAULT_API_BASE,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        """``platform_public_keys``: accepted ``Wechatpay-Serial`` -> platform public key PEM
        (or platform certificate PEM); the first entry is sent as our ``Wechatpay-Serial``."""
        if len(api_v3_key.encode("utf-8")) != API_V3_KEY_LENGTH:
            raise ProviderNotConfiguredError(
                f"WECHAT_PAY_API_KEY must be the {API_V3_KEY_LENGTH}-character APIv3 key"
            )
        if not platform_public_keys:
            raise ProviderNotConfiguredError("WeChat Pay needs at least one platform public key")
        self.mchid = mchid
        self.appid = appid
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._api_v3_key = api_v3_key
        self._merchant_serial = merchant_cert_serial
        self._private_key = _load_private_key(merchant_private_key)
        self._platform_keys: dict[str, RSAPublicKey] = {
            key_id: _load_platform_key(pem, key_id) for key_id, pem in platform_public_keys.items()
        }
        self._primary_key_id = next(iter(self._platform_keys))
        self._clock = clock
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"WeChatPayProvider(mchid={self.mchid!r}, api_base={self.api_base!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WeChatPayProvider:
        """Build from ``WECHAT_PAY_*`` settings (``settings.provider_kwargs``); never touches
        the network."""
        return cls(**provider_kwargs(env))

    # --- PaymentProvider ---------------------------------------------------------------

    def create_order(self, request: CheckoutRequest) -> CheckoutSession:
        """Native pay: ``POST /v3/pay/transactions/native`` -> ``code_url`` for the QR code.

        Idempotent per order: ``out_trade_no`` is the order id, and WeChat answers the same
        ``code_url`` when the same order is placed again with the same parameters.
        """
        currency = request.currency.upper()
        if currency != "CNY":
            raise PermanentError(
                f"WeChat Pay Native charges CNY only; order {request.order_id} is in "
                f"{request.currency}",
                safe_message="WeChat Pay accepts payments in CNY only.",
            )
        if request.amount <= 0:
            raise PermanentError(
                f"WeChat Pay needs a positive amount; order {request.order_id} has "
                f"{request.amount}",
                safe_message="This order has no amount to pay.",
            )
        out_trade_no = request.order_ref
        description = f"VibeBox {request.plan_name} ({request.billing_cycle})"
        body = {
            "appid": self.appid,
            "mchid": self.mchid,
            "description": description[:DESCRIPTION_MAX_CHARS],
            "out_trade_no": out_trade_no,
            "notify_url": request.notify_url,
            "amount": {"total": request.amount, "currency": currency},
        }
        data = self._request("POST", "/v3/pay/transactions/native", body)
        code_url = data.get("code_url") if isinstance(data, dict) else None
        if not isinstance(code_url, str) or not code_url:
            raise TransientError(
                "WeChat Pay native order answered without a code_url",
                safe_message="WeChat Pay gave an unexpected answer.",
            )
        return CheckoutSession(provider_order_id=out_trade_no, qr_code_url=code_url)

    def handle_callback(self, request: WebhookRequest) -> list[ProviderEvent]:
        """Verify (platform key, accepted serial, fresh timestamp), decrypt, normalize.

        ``TRANSACTION.SUCCESS`` with ``trade_state`` SUCCESS is a payment; ``REFUND.SUCCESS``
        returning the whole amount is REFUNDED (a partial refund is recorded but IGNORED);
        every other verified notification is IGNORED, still recorded by its id.
        """
        return verified_events(
            request,
            platform_keys=self._platform_keys,
            now=self._clock(),
            api_v3_key=self._api_v3_key,
            mchid=self.mchid,
            appid=self.appid,
        )

    def query_order(self, order: OrderRef) -> OrderQuery:
        """``GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=...`` (signed answer)."""
        out_trade_no = order.provider_order_id or order.order_ref
        path = (
            f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}"
            f"?mchid={quote(self.mchid, safe='')}"
        )
        try:
            data = self._request("GET", path)
        except _ApiRefusal as exc:
            if exc.status == 404 and exc.code == "ORDER_NOT_EXIST":
                return OrderQuery(state=OrderState.UNKNOWN)
            raise
        if not isinstance(data, dict) or data.get("out_trade_no") != out_trade_no:
            raise TransientError(
                f"WeChat Pay query of {out_trade_no} answered for another order",
                safe_message="WeChat Pay gave an unexpected answer.",
            )
        if data.get("mchid") != self.mchid:
            raise PermanentError(
                f"WeChat Pay query of {out_trade_no} answered for another merchant",
                safe_message="WeChat Pay gave an unexpected answer.",
            )
        trade_state = data.get("trade_state")
        state = _TRADE_STATES.get(trade_state) if isinstance(trade_state, str) else None
        if state is None:
            log.warning("WeChat Pay order %s has unknown trade_state %r", out_trade_no, trade_state)
            return OrderQuery(state=OrderState.PENDING)
        if state is not OrderState.PAID:
            return OrderQuery(state=state)

        transaction_id = data.get("transaction_id")
        amount, currency = _amount(data)
        if not isinstance(transaction_id, str) or not transaction_id or amount is None:
            raise TransientError(
                f"WeChat Pay query of {out_trade_no}: paid without transaction_id/amount",
                safe_message="WeChat Pay gave an unexpected answer.",
            )
        event = ProviderEvent(
            provider=self.name,
            event_id=f"query:{out_trade_no}:{transaction_id}",
            type="query.SUCCESS",
            kind=EventKind.PAID,
            order_id=_order_id(out_trade_no),
            provider_order_id=out_trade_no,
            amount=amount,
            currency=currency,
            occurred_at=_parse_time(data.get("success_time")),
            payload=_public_payload(data),
        )
        return OrderQuery(state=OrderState.PAID, event=event)

    def cancel_order(self, order: OrderRef) -> None:
        """``POST .../out-trade-no/{out_trade_no}/close``; unknown or closed orders: no-op.

        A paid order cannot be closed: that is a ``PermanentError`` (reconcile it instead).
        """
        out_trade_no = order.provider_order_id or order.order_ref
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close"
        try:
            self._request("POST", path, {"mchid": self.mchid})
        except _ApiRefusal as exc:
            if exc.code in ("ORDER_NOT_EXIST", "ORDER_CLOSED", "ORDERCLOSED"):
                return
            if exc.code in ("ORDERPAID", "ORDER_PAID"):
                raise PermanentError(
                    f"WeChat Pay order {out_trade_no} is already paid and cannot be closed",
                    safe_message="This order is already paid.",
                ) from None
            raise

    def cancel_subscription(self, provider_subscription_id: str, *, at_period_end: bool) -> None:
        """Native pay is one-off: there is no subscription at WeChat to cancel."""

    def ack(self) -> WebhookReply:
        return WebhookReply(status=204, body="")

    def nack(self, message: str) -> WebhookReply:
        return WebhookReply(
            status=400, body=json.dumps({"code": "FAIL", "message": message}, ensure_ascii=False)
        )

    # --- internals ---------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Signed call; verifies the platform's signature on every 2xx answer."""
        what = f"WeChat Pay {method} {path.split('?')[0]}"
        payload = "" if body is None else json.dumps(body, ensure_ascii=False)
        authorization = build_authorization(
            path, method, self.mchid, self._merchant_serial, self._private_key, data=payload
        )
        headers = {
            "Authorization": authorization,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "vibebox (wechatpayv3 helpers)",
            # Public-key mode: ask WeChat to sign its answer with this platform key.
            "Wechatpay-Serial": self._primary_key_id,
        }
        started = time.monotonic()
        with request_faults(
            what, "WeChat Pay", timeout=self.timeout, url_setting="WECHAT_PAY_API_BASE"
        ):
            response = self._session.request(
                method,
                self.api_base + path,
                data=payload.encode("utf-8") if body is not None else None,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        status = response.status_code
        log.debug("%s -> %s in %.0f ms", what, status, (time.monotonic() - started) * 1000)

        if status >= 400:
            code, message = _error_of(response)
            text = f"{what}: HTTP {status} {code} {message}".rstrip()
            if is_transient_status(status):
                raise TransientError(text, safe_message="WeChat Pay is temporarily failing.")
            raise _ApiRefusal(
                text,
                status=status,
                code=code,
                safe_message="WeChat Pay refused the request.",
            )
        if not 200 <= status < 300:  # a redirect: WECHAT_PAY_API_BASE points elsewhere
            raise PermanentError(
                f"{what}: unexpected HTTP {status}",
                safe_message="WeChat Pay is misconfigured.",
            )
        try:
            text_body = response.content.decode("utf-8")
        except UnicodeDecodeError:
            text_body = None
        if text_body is None or not self._response_verified(response, text_body):
            # WeChat: a 2xx answer without a valid signature is forged or tampered with.
            raise PermanentError(
                f"{what}: HTTP {status} answer is not signed by an accepted platform key",
                safe_message="WeChat Pay's answer could not be verified.",
            )
        if not text_body:
            return None
        try:
            return json.loads(text_body)
        except ValueError:
            raise TransientError(
                f"{what}: HTTP {status} with a body that is not JSON",
                safe_message="WeChat Pay gave an unexpected answer.",
            ) from None

    def _response_verified(self, response: requests.Response, text: str) -> bool:
        serial = response.headers.get("Wechatpay-Serial", "")
        key = self._platform_keys.get(serial)
        timestamp = response.headers.get("Wechatpay-Timestamp", "")
        nonce = response.headers.get("Wechatpay-Nonce", "")
        signature = response.headers.get("Wechatpay-Signature", "")
        if key is None or not (timestamp and nonce and signature):
            return False
        return _verify(key, timestamp, nonce, text, signature)


def _error_of(response: requests.Response) -> tuple[str, str]:
    """WeChat's ``{"code", "message"}`` error body, shortened; never echoes our request."""
    try:
        data = response.json()
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    code = data.get("code")
    message = data.get("message")
    return (
        code[:64] if isinstance(code, str) else "",
        message[:200] if isinstance(message, str) else "",
    )
