"""A local WeChat Pay API v3 double that checks and signs like the real gateway.

Built to docs/payments.md (WeChat Pay API v3).

Real HTTP on 127.0.0.1 (random port), so the provider, the API process and a Celery worker
reach it exactly as they would reach ``https://api.mch.weixin.qq.com``:

- every request must carry ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",
  nonce_str="..",signature="..",timestamp="..",serial_no=".."``; the signature (RSA-SHA256,
  PKCS#1 v1.5, base64) over ``METHOD\\nPATH?QUERY\\nTS\\nNONCE\\nBODY\\n`` is verified with the
  merchant public key; wrong mchid/serial, stale timestamp or bad signature -> 401 SIGN_ERROR;
- ``POST /v3/pay/transactions/native`` -> ``{"code_url": "weixin://wxpay/bizpayurl?pr=.."}``
  (the same code_url again for the same order and parameters; 403 OUT_TRADE_NO_USED when the
  parameters differ); ``GET /v3/pay/transactions/out-trade-no/{no}?mchid=`` -> the transaction
  or 404 ORDER_NOT_EXIST; ``POST .../out-trade-no/{no}/close`` -> 204 (400 ORDERPAID when
  paid, 404 ORDER_NOT_EXIST when unknown);
- every answer is signed like WeChat's (``Wechatpay-Timestamp/-Nonce/-Signature/-Serial``,
  RSA-SHA256 over ``TS\\nNONCE\\nBODY\\n``) with the platform key.

Notifications are built by :func:`build_notification` exactly as WeChat builds them
(AEAD_AES_256_GCM resource under the APIv3 key, RSA-SHA256 signature headers); the double's
:meth:`WeChatPayDouble.notification` / :meth:`WeChatPayDouble.notify` do it for its orders.

In-process: ``with WeChatPayDouble(make_keys()) as double: double.provider_env()``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import string
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.support.http_double import DoubleRequestHandler, InjectedFaults, ThreadedHTTPDouble
from tests.support.payments.keys import rsa_key_pair

DEFAULT_MCHID = "1900000109"
DEFAULT_APPID = "wxd678efh567hg6787"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHINA = timezone(timedelta(hours=8))
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')

Response = tuple[int, dict[str, Any] | None]


# --- keys and signing (what WeChat and the merchant each hold) ------------------------


@dataclass(frozen=True)
class WeChatKeys:
    """Merchant and platform RSA-2048 key pairs (PEM text) with their serial/id."""

    merchant_private_key: str = field(repr=False)  # PKCS#8, like apiclient_key.pem
    merchant_public_key: str
    merchant_serial: str  # 40 upper-case hex chars, like a merchant API certificate serial
    platform_private_key: str = field(repr=False)  # WeChat's secret: signs answers/callbacks
    platform_public_key: str  # what merchants download in public-key mode
    platform_key_id: str  # "PUB_KEY_ID_..."


def make_keys() -> WeChatKeys:
    """Fresh merchant + platform key pairs (about 0.1 s each)."""
    merchant_private, merchant_public = rsa_key_pair()
    platform_private, platform_public = rsa_key_pair()
    return WeChatKeys(
        merchant_private_key=merchant_private,
        merchant_public_key=merchant_public,
        merchant_serial=secrets.token_hex(20).upper(),
        platform_private_key=platform_private,
        platform_public_key=platform_public,
        platform_key_id=f"PUB_KEY_ID_{secrets.randbelow(10**30):030d}",
    )


def make_api_v3_key() -> str:
    """A 32-character APIv3 key (the merchant sets one in the merchant platform)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _nonce(length: int = 32) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _private_key(pem: str | rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    if isinstance(pem, rsa.RSAPrivateKey):
        return pem
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _public_key(pem: str | rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    if isinstance(pem, rsa.RSAPublicKey):
        return pem
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def rsa_sign(private_key: str | rsa.RSAPrivateKey, message: str) -> str:
    """base64(RSA-SHA256 PKCS#1 v1.5) of the UTF-8 message."""
    signature = _private_key(private_key).sign(
        message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
    )
    return base64.b64encode(signature).decode()


def rsa_verify(public_key: str | rsa.RSAPublicKey, message: str, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        _public_key(public_key).verify(
            raw, message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def wechatpay_headers(
    private_key: str | rsa.RSAPrivateKey,
    serial: str,
    body: str,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The ``Wechatpay-*`` headers WeChat puts on an answer or a callback of ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or _nonce()
    return {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": rsa_sign(private_key, f"{ts}\n{nonce}\n{body}\n"),
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": SIGNATURE_TYPE,
    }


def encrypt_resource(
    api_v3_key: str, plaintext: dict[str, Any], *, original_type: str = "transaction"
) -> dict[str, str]:
    """The ``resource`` object of a notification: AEAD_AES_256_GCM under the APIv3 key."""
    nonce = _nonce(12)
    associated_data = original_type
    ciphertext = AESGCM(api_v3_key.encode()).encrypt(
        nonce.encode(),
        json.dumps(plaintext, ensure_ascii=False, separators=(",", ":")).encode(),
        associated_data.encode(),
    )
    return {
        "original_type": original_type,
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def _wechat_time(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(CHINA).isoformat(timespec="seconds")


def transaction_resource(
    out_trade_no: str,
    *,
    amount: int,
    currency: str = "CNY",
    trade_state: str = "SUCCESS",
    mchid: str = DEFAULT_MCHID,
    appid: str = DEFAULT_APPID,
    transaction_id: str | None = None,
) -> dict[str, Any]:
    """A decrypted ``transaction`` as WeChat sends it in ``TRANSACTION.SUCCESS``."""
    return {
        "mchid": mchid,
        "appid": appid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id or _transaction_id(),
        "trade_type": "NATIVE",
        "trade_state": trade_state,
        "trade_state_desc": "支付成功" if trade_state == "SUCCESS" else trade_state,
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": _wechat_time(),
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {
            "total": amount,
            "payer_total": amount,
            "currency": currency,
            "payer_currency": currency,
        },
    }


def build_notification(
    out_trade_no: str,
    *,
    platform_private_key: str | rsa.RSAPrivateKey,
    serial: str,
    api_v3_key: str,
    amount: int,
    currency: str = "CNY",
    trade_state: str = "SUCCESS",
    notification_id: str | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
    mchid: str = DEFAULT_MCHID,
    appid: str = DEFAULT_APPID,
    transaction_id: str | None = None,
    event_type: str = "TRANSACTION.SUCCESS",
    resource: dict[str, Any] | None = None,
) -> tuple[dict[str, str], bytes]:
    """A payment notification exactly as WeChat POSTs it to ``notify_url``: (headers, body).

    ``resource`` replaces the decrypted payload (e.g. a refund object); ``timestamp``
    (unix seconds) and ``nonce`` fix the signature inputs (stale-timestamp tests).
    """
    plaintext = resource or transaction_resource(
        out_trade_no,
        amount=amount,
        currency=currency,
        trade_state=trade_state,
        mchid=mchid,
        appid=appid,
        transaction_id=transaction_id,
    )
    original_type = "refund" if event_type.startswith("REFUND.") else "transaction"
    summary = "支付成功" if event_type == "TRANSACTION.SUCCESS" else event_type
    notification = {
        "id": notification_id or str(uuid.uuid4()),
        "create_time": _wechat_time(),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": encrypt_resource(api_v3_key, plaintext, original_type=original_type),
    }
    body = json.dumps(notification, ensure_ascii=False, separators=(",", ":"))
    headers = wechatpay_headers(
        platform_private_key, serial, body, timestamp=timestamp, nonce=nonce
    )
    headers["Content-Type"] = "application/json"
    return headers, body.encode("utf-8")


def _transaction_id() -> str:
    return "42000" + "".join(secrets.choice(string.digits) for _ in range(23))


# --- the double -----------------------------------------------------------------------


@dataclass
class _Order:
    appid: str
    mchid: str
    description: str
    out_trade_no: str
    notify_url: str
    total: int
    currency: str
    code_url: str
    trade_state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: str | None = None

    def transaction(self) -> dict[str, Any]:
        """The query answer (no payer/transaction_id before payment, as WeChat does)."""
        data: dict[str, Any] = {
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": self.out_trade_no,
            "trade_state": self.trade_state,
            "trade_state_desc": _STATE_DESC.get(self.trade_state, self.trade_state),
            "amount": {"total": self.total, "currency": self.currency},
        }
        if self.transaction_id:
            data.update(
                transaction_id=self.transaction_id,
                trade_type="NATIVE",
                bank_type="OTHERS",
                attach="",
                success_time=self.success_time,
                payer={"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            )
            data["amount"].update(payer_total=self.total, payer_currency=self.currency)
        return data


_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "CLOSED": "订单已关闭",
    "PAYERROR": "支付失败",
    "REVOKED": "已撤销",
    "USERPAYING": "用户支付中",
}


@dataclass
class _Faults(InjectedFaults):
    fail_status: int = 500
    fail_path: str = "/v3/"
    response_signature: str = "valid"  # "valid" | "forged" | "missing"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    target: str  # path + query, exactly as signed
    body: str
    signature_ok: bool


class WeChatPayDouble(ThreadedHTTPDouble):
    """The WeChat Pay v3 gateway double; thread-safe state, faults and assertion helpers."""

    _thread_name = "wechat-double"

    def __init__(
        self,
        keys: WeChatKeys,
        *,
        mchid: str = DEFAULT_MCHID,
        appid: str = DEFAULT_APPID,
        api_v3_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.keys = keys
        self.mchid = mchid
        self.appid = appid
        self.api_v3_key = api_v3_key or make_api_v3_key()
        self._merchant_key = _public_key(keys.merchant_public_key)
        self._platform_key = _private_key(keys.platform_private_key)
        self._forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._orders: dict[str, _Order] = {}
        self._calls: Counter[str] = Counter()
        self._seen: list[SeenRequest] = []

    # --- lifecycle ---------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    def provider_env(self) -> dict[str, str]:
        """``WECHAT_PAY_*`` settings that point a provider at this double."""
        return {
            "WECHAT_PAY_MCHID": self.mchid,
            "WECHAT_PAY_APPID": self.appid,
            "WECHAT_PAY_API_KEY": self.api_v3_key,
            "WECHAT_PAY_MCH_PRIVATE_KEY": self.keys.merchant_private_key,
            "WECHAT_PAY_MCH_CERT_SERIAL": self.keys.merchant_serial,
            "WECHAT_PAY_PUBLIC_KEY": self.keys.platform_public_key,
            "WECHAT_PAY_PUBLIC_KEY_ID": self.keys.platform_key_id,
            "WECHAT_PAY_API_BASE": self.url,
        }

    # --- fault switches ----------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, path: str = "/v3/") -> None:
        """Answer the next ``n`` requests whose path starts with ``path`` with ``status``."""
        with self._lock:
            self._faults.fail_next(n, status, path)

    def set_hang(self, seconds: float) -> None:
        """Sleep this long before answering (0 = off)."""
        with self._lock:
            self._faults.hang = seconds

    def set_response_signature(self, mode: str) -> None:
        """``"valid"``, ``"forged"`` (signed with another key) or ``"missing"`` (no headers)."""
        assert mode in ("valid", "forged", "missing")
        with self._lock:
            self._faults.response_signature = mode

    def reset(self) -> None:
        """Faults off, orders and request log cleared."""
        with self._lock:
            self._faults = _Faults()
            self._orders.clear()
            self._calls.clear()
            self._seen.clear()

    # --- payment simulation --------------------------------------------------------------

    def pay(self, out_trade_no: str) -> str:
        """The user scanned and paid: SUCCESS with a new transaction_id (returned)."""
        with self._lock:
            order = self._orders[out_trade_no]
            if order.trade_state != "SUCCESS":
                order.trade_state = "SUCCESS"
                order.transaction_id = _transaction_id()
                order.success_time = _wechat_time()
            assert order.transaction_id is not None
            return order.transaction_id

    def set_trade_state(self, out_trade_no: str, trade_state: str) -> None:
        """Force a state (CLOSED, PAYERROR, REVOKED, USERPAYING, NOTPAY, ...)."""
        with self._lock:
            self._orders[out_trade_no].trade_state = trade_state

    def order(self, out_trade_no: str) -> dict[str, Any] | None:
        """What the double holds for an order (the query answer plus notify_url etc.)."""
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is None:
                return None
            return {
                **order.transaction(),
                "description": order.description,
                "notify_url": order.notify_url,
                "code_url": order.code_url,
            }

    def notification(self, out_trade_no: str, **overrides: Any) -> tuple[dict[str, str], bytes]:
        """The TRANSACTION.SUCCESS notification of a paid order, signed with the platform
        key; ``overrides`` go to :func:`build_notification` (e.g. ``timestamp=``)."""
        with self._lock:
            order = self._orders[out_trade_no]
            kwargs: dict[str, Any] = {
                "platform_private_key": self._platform_key,
                "serial": self.keys.platform_key_id,
                "api_v3_key": self.api_v3_key,
                "amount": order.total,
                "currency": order.currency,
                "trade_state": order.trade_state,
                "mchid": order.mchid,
                "appid": order.appid,
                "transaction_id": order.transaction_id,
            }
        kwargs.update(overrides)
        return build_notification(out_trade_no, **kwargs)

    def notify(
        self, out_trade_no: str, *, url: str | None = None, timeout: float = 10.0, **overrides: Any
    ) -> requests.Response:
        """POST the order's notification to its ``notify_url`` (or ``url``), as WeChat does."""
        headers, body = self.notification(out_trade_no, **overrides)
        with self._lock:
            target = url or self._orders[out_trade_no].notify_url
        return requests.post(target, data=body, headers=headers, timeout=timeout)

    # --- counters and assertion helpers ----------------------------------------------

    def calls(self, method_and_route: str) -> int:
        """Requests received for ``"POST native"``, ``"GET query"`` or ``"POST close"``."""
        with self._lock:
            return self._calls[method_and_route]

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    # --- request handling (server threads) ---------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        text = body.decode("utf-8", errors="replace")
        auth_error = self._check_authorization(method, target, headers.get("authorization"), text)
        path = urlsplit(target).path
        route = _route_name(method, path)
        with self._lock:
            self._calls[f"{method} {route}"] += 1
            self._seen.append(SeenRequest(method, target, text, auth_error is None))
            faults = self._faults
            hang = faults.hang
            injected = faults.take_failure(path)
        if hang:
            self._stopping.wait(hang)
        if injected is not None:
            return injected, {"code": "SYSTEM_ERROR", "message": "injected fault"}
        if auth_error is not None:
            return 401, {"code": "SIGN_ERROR", "message": auth_error}
        return self._route(method, target, text)

    def sign_response(self, body: str) -> dict[str, str]:
        with self._lock:
            mode = self._faults.response_signature
        if mode == "missing":
            return {}
        key = self._forged_key if mode == "forged" else self._platform_key
        signed = wechatpay_headers(key, self.keys.platform_key_id, body)
        del signed["Wechatpay-Signature-Type"]  # answers carry no signature type
        return signed

    def _check_authorization(
        self, method: str, target: str, authorization: str | None, body: str
    ) -> str | None:
        """None when the merchant signature is valid, else the reason (as WeChat words it)."""
        if not authorization or not authorization.startswith(SIGNATURE_TYPE + " "):
            return "签名错误: missing or unsupported Authorization"
        params = dict(_AUTH_PARAM.findall(authorization[len(SIGNATURE_TYPE) + 1 :]))
        required = ("mchid", "nonce_str", "signature", "timestamp", "serial_no")
        if not all(params.get(k) for k in required):
            return "Authorization is missing mchid/nonce_str/signature/timestamp/serial_no"
        if params["mchid"] != self.mchid:
            return "mchid in Authorization does not match"
        if params["serial_no"] != self.keys.merchant_serial:
            return "serial_no is not the merchant certificate serial"
        if not params["timestamp"].isdigit() or abs(time.time() - int(params["timestamp"])) > 300:
            return "timestamp in Authorization is expired"
        message = f"{method}\n{target}\n{params['timestamp']}\n{params['nonce_str']}\n{body}\n"
        if not rsa_verify(self._merchant_key, message, params["signature"]):
            return "签名错误: signature does not verify with the merchant key"
        return None

    def _route(self, method: str, target: str, body: str) -> Response:
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query)
        if path == "/v3/pay/transactions/native" and method == "POST":
            return self._native(body)
        prefix = "/v3/pay/transactions/out-trade-no/"
        if path.startswith(prefix):
            rest = path[len(prefix) :].split("/")
            if len(rest) == 1 and method == "GET":
                if query.get("mchid") != [self.mchid]:
                    return 400, {"code": "PARAM_ERROR", "message": "mchid 与请求不符"}
                return self._query(rest[0])
            if len(rest) == 2 and rest[1] == "close" and method == "POST":
                return self._close(rest[0], body)
        return 404, {"code": "NOT_FOUND", "message": f"no route {method} {path}"}

    def _native(self, body: str) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, {"code": "PARAM_ERROR", "message": "body is not JSON"}
        amount = payload.get("amount") if isinstance(payload, dict) else None
        fields = ("appid", "mchid", "description", "out_trade_no", "notify_url")
        if (
            not isinstance(payload, dict)
            or not all(isinstance(payload.get(k), str) and payload[k] for k in fields)
            or not isinstance(amount, dict)
            or not isinstance(amount.get("total"), int)
            or amount["total"] <= 0
        ):
            return 400, {"code": "PARAM_ERROR", "message": "缺少参数或参数格式错误"}
        if payload["mchid"] != self.mchid or payload["appid"] != self.appid:
            return 400, {"code": "APPID_MCHID_NOT_MATCH", "message": "appid和mch_id不匹配"}
        currency = amount.get("currency", "CNY")
        if currency != "CNY":
            return 400, {"code": "PARAM_ERROR", "message": "境内商户仅支持人民币 CNY"}
        if not 6 <= len(payload["out_trade_no"]) <= 32:
            return 400, {"code": "PARAM_ERROR", "message": "out_trade_no 长度错误"}
        order = _Order(
            appid=payload["appid"],
            mchid=payload["mchid"],
            description=payload["description"],
            out_trade_no=payload["out_trade_no"],
            notify_url=payload["notify_url"],
            total=amount["total"],
            currency=currency,
            code_url=f"weixin://wxpay/bizpayurl?pr={_nonce(7)}",
        )
        with self._lock:
            existing = self._orders.get(order.out_trade_no)
            if existing is None:
                self._orders[order.out_trade_no] = order
                return 200, {"code_url": order.code_url}
            same = (existing.description, existing.total, existing.notify_url) == (
                order.description,
                order.total,
                order.notify_url,
            )
            if same and existing.trade_state == "NOTPAY":
                return 200, {"code_url": existing.code_url}
            if existing.trade_state == "SUCCESS":
                return 400, {"code": "ORDERPAID", "message": "该订单已支付"}
            return 403, {"code": "OUT_TRADE_NO_USED", "message": "商户订单号重复"}

    def _query(self, out_trade_no: str) -> Response:
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is None:
                return 404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}
            return 200, order.transaction()

    def _close(self, out_trade_no: str, body: str) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or payload.get("mchid") != self.mchid:
            return 400, {"code": "PARAM_ERROR", "message": "mchid 与请求不符"}
        with self._lock:
            order = self._orders.get(out_trade_no)
            if order is None:
                return 404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}
            if order.trade_state == "SUCCESS":
                return 400, {"code": "ORDERPAID", "message": "订单已支付"}
            order.trade_state = "CLOSED"
            return 204, None


def _route_name(method: str, path: str) -> str:
    if path == "/v3/pay/transactions/native":
        return "native"
    if path.startswith("/v3/pay/transactions/out-trade-no/"):
        return "close" if path.endswith("/close") else "query"
    return path


def _handler_for(double: WeChatPayDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(DoubleRequestHandler):
        def _serve(self) -> None:
            body = self.read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = double.handle(self.command, self.path, headers, body)
            text = "" if payload is None else json.dumps(payload, ensure_ascii=False)
            raw = text.encode("utf-8")
            content_type = "application/json; charset=utf-8" if raw else None
            extra = {"Request-ID": uuid.uuid4().hex, **double.sign_response(text)}
            try:
                self.send_body(status, raw, content_type, extra)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout test)

        do_GET = _serve
        do_POST = _serve

    return Handler
