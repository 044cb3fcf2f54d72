"""A local double of the Alipay open-platform gateway (``gateway.do``) that signs like Alipay.

Built to docs/payments.md (Alipay).

Real HTTP on 127.0.0.1, so the provider's own HTTP code (timeouts, error mapping) runs as it
does against ``https://openapi.alipay.com/gateway.do``:

- Every request (GET query string or POST form) is checked as the gateway does: single-valued
  parameters, ``app_id`` of the configured app (``40002 isv.invalid-app-id``), ``sign_type``
  RSA2, ``charset`` utf-8, a ``timestamp`` in Beijing time (GMT+8) within 30 minutes
  (``isv.invalid-timestamp``), and the RSA2 signature (SHA256withRSA, base64) over the sorted
  ``k=v`` pairs of every non-empty parameter except ``sign``, checked with the APP's public
  key (``40002 isv.invalid-signature``). Those gateway errors are answered unsigned.
- ``alipay.trade.precreate`` answers ``qr_code`` (the same one again for the same
  ``out_trade_no`` and amount; ``ACQ.CONTEXT_INCONSISTENT`` for another amount,
  ``ACQ.TRADE_HAS_SUCCESS`` / ``ACQ.TRADE_HAS_CLOSE`` once paid / closed). As at Alipay, the
  trade is not visible to ``query``/``close`` (``ACQ.TRADE_NOT_EXIST``) until the buyer scans
  the code (:meth:`AlipayDouble.scan`) or pays (:meth:`AlipayDouble.pay`).
- ``alipay.trade.query`` and ``alipay.trade.close`` by ``out_trade_no`` or ``trade_no``.
- ``alipay.trade.page.pay`` (the browser opening a page-pay checkout URL) records the trade
  and answers a small HTML cashier page.
- Business answers are signed with the ALIPAY private key exactly as Alipay signs them: the
  signature covers the exact JSON text of the ``<method>_response`` value, and the body is
  ``{"<method>_response":<that text>,"sign":"..."}`` (the SDK cuts that text out of the raw
  body by brace matching and verifies it with the Alipay public key).

Notifications are built by :func:`build_notify` (or :meth:`AlipayDouble.pay`, which also
marks the trade paid): a form-encoded body signed RSA2 over the sorted ``k=v`` pairs of every
parameter except ``sign`` and ``sign_type``, as Alipay's async notify is.

In-process: ``with AlipayDouble(app_id=..., app_public_key=..., alipay_private_key=...) as
double: double.url``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.http_double import DoubleRequestHandler, ThreadedHTTPDouble
from tests.support.payments.keys import rsa_key_pair

BEIJING = timezone(timedelta(hours=8), "CST")  # Alipay's clock: GMT+8, no DST
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIMESTAMP_TOLERANCE = timedelta(minutes=30)
DEFAULT_APP_ID = "2021000000000001"
DEFAULT_SELLER_ID = "2088000000000001"

Response = tuple[int, str, bytes]  # status, content type, body


# --- keys and signatures (``cryptography``, independent of the SDK under test) ----------


class AlipayKeys(NamedTuple):
    """Both RSA 2048 key pairs of an Alipay integration, as PEM text."""

    app_private: str  # the merchant app's key: signs requests (ALIPAY_PRIVATE_KEY)
    app_public: str  # uploaded to Alipay: the gateway verifies requests with it
    alipay_private: str  # Alipay's own key: signs responses and notifications
    alipay_public: str  # shown in the Alipay console (ALIPAY_PUBLIC_KEY)


def make_keys() -> AlipayKeys:
    """Fresh app and Alipay RSA 2048 key pairs (PEM: PKCS#8 private, SPKI public)."""
    app_private, app_public = rsa_key_pair()
    alipay_private, alipay_public = rsa_key_pair()
    return AlipayKeys(app_private, app_public, alipay_private, alipay_public)


def bare_base64(pem: str) -> str:
    """The key as the Alipay console shows it: base64 DER with no PEM armour or newlines."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def sign_content(params: dict[str, str], *, exclude: tuple[str, ...]) -> str:
    """The string Alipay signs: sorted ``k=v`` pairs (raw, not URL-encoded) joined by ``&``."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in exclude)


def rsa2_sign(content: str, private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def rsa2_verify(content: str, signature: str, public_key_pem: str) -> bool:
    key = serialization.load_pem_public_key(public_key_pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, content.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def request_sign_content(params: dict[str, str]) -> str:
    """What the gateway verifies: every non-empty parameter but ``sign`` (``sign_type`` too)."""
    return sign_content({k: v for k, v in params.items() if v != ""}, exclude=("sign",))


def verify_request(params: dict[str, str], app_public_key: str) -> bool:
    """True when ``params`` (a gateway request or page-pay URL query) is signed by the app."""
    sign = params.get("sign")
    return bool(sign) and rsa2_verify(request_sign_content(params), sign or "", app_public_key)


def parse_form(data: str) -> dict[str, str]:
    """Single-valued form/query parameters (``ValueError`` on a repeated key)."""
    pairs = parse_qsl(data, keep_blank_values=True, encoding="utf-8", errors="strict")
    params = dict(pairs)
    if len(params) != len(pairs):
        raise ValueError("repeated parameter")
    return params


def beijing_now() -> datetime:
    return datetime.now(BEIJING)


# --- notifications ------------------------------------------------------------------------


def notify_params(
    out_trade_no: str,
    *,
    alipay_private_key: str,
    app_id: str,
    seller_id: str,
    total_amount: str,
    trade_status: str = "TRADE_SUCCESS",
    notify_id: str | None = None,
    trade_no: str | None = None,
    subject: str = "VibeBox Basic (monthly)",
    extra: dict[str, str] | None = None,
    omit: tuple[str, ...] = (),
) -> dict[str, str]:
    """The parameters of an async notify (``trade_status_sync``), ``sign`` included.

    ``extra`` adds or overrides fields before signing; ``omit`` drops fields before signing
    (a well-signed notify that lacks them).
    """
    now = beijing_now()
    created = (now - timedelta(minutes=1)).strftime(TIME_FORMAT)
    params = {
        "gmt_create": created,
        "charset": "utf-8",
        "seller_email": "merchant@example.com",
        "subject": subject,
        "buyer_id": "2088102177846880",
        "invoice_amount": total_amount,
        "notify_id": notify_id or "2026" + secrets.token_hex(15),
        "fund_bill_list": json.dumps(
            [{"amount": total_amount, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")
        ),
        "notify_type": "trade_status_sync",
        "trade_status": trade_status,
        "receipt_amount": total_amount,
        "buyer_pay_amount": total_amount,
        "app_id": app_id,
        "sign_type": "RSA2",
        "seller_id": seller_id,
        "notify_time": now.strftime(TIME_FORMAT),
        "version": "1.0",
        "out_trade_no": out_trade_no,
        "total_amount": total_amount,
        "trade_no": trade_no or _new_trade_no(),
        "auth_app_id": app_id,
        "buyer_logon_id": "csq***@sandbox.com",
        "point_amount": "0.00",
    }
    if trade_status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        params["gmt_payment"] = created
    params.update(extra or {})
    for name in omit:
        params.pop(name, None)
    params["sign"] = rsa2_sign(
        sign_content(params, exclude=("sign", "sign_type")), alipay_private_key
    )
    return params


def build_notify(
    out_trade_no: str,
    *,
    alipay_private_key: str,
    app_id: str,
    seller_id: str,
    total_amount: str,
    trade_status: str = "TRADE_SUCCESS",
    notify_id: str | None = None,
    trade_no: str | None = None,
    extra: dict[str, str] | None = None,
    omit: tuple[str, ...] = (),
) -> bytes:
    """A form-encoded async notify body, signed RSA2 exactly as Alipay signs it.

    Post it with ``Content-Type: application/x-www-form-urlencoded; charset=utf-8``
    (:data:`NOTIFY_HEADERS`).
    """
    params = notify_params(
        out_trade_no,
        alipay_private_key=alipay_private_key,
        app_id=app_id,
        seller_id=seller_id,
        total_amount=total_amount,
        trade_status=trade_status,
        notify_id=notify_id,
        trade_no=trade_no,
        extra=extra,
        omit=omit,
    )
    return urlencode(params).encode("ascii")


NOTIFY_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def _new_trade_no() -> str:
    return beijing_now().strftime("%Y%m%d") + "22001" + f"{secrets.randbelow(10**15):015d}"


# --- the double ---------------------------------------------------------------------------


@dataclass
class Trade:
    out_trade_no: str
    total_amount: str
    subject: str
    notify_url: str | None
    method: str  # alipay.trade.precreate | alipay.trade.page.pay
    trade_no: str = field(default_factory=_new_trade_no)
    qr_code: str | None = None
    status: str = "WAIT_BUYER_PAY"
    visible: bool = False  # the buyer scanned / logged in: query and close can see it
    gmt_payment: str | None = None
    biz_content: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _InjectedError:
    method: str
    body: dict[str, str]


@dataclass
class _Faults:
    fail_count: int = 0
    fail_status: int = 500
    hang: float = 0.0
    business_error: _InjectedError | None = None
    business_error_count: int = 0
    bad_response_sign: bool = False
    unsigned_responses: bool = False


class _GatewayError(Exception):
    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.body = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _business_error(sub_code: str, sub_msg: str) -> dict[str, str]:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}


class AlipayDouble(ThreadedHTTPDouble):
    """The gateway double; thread-safe state, fault switches and assertion helpers."""

    _thread_name = "alipay-double"

    def __init__(
        self,
        *,
        app_public_key: str,
        alipay_private_key: str,
        app_id: str = DEFAULT_APP_ID,
        seller_id: str = DEFAULT_SELLER_ID,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.app_id = app_id
        self.seller_id = seller_id
        self._app_public_key = app_public_key
        self._alipay_private_key = alipay_private_key
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._trades: dict[str, Trade] = {}
        self._calls: Counter[str] = Counter()
        self._requests: list[dict[str, str]] = []

    # --- lifecycle ---------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    @property
    def url(self) -> str:
        """The gateway URL (``ALIPAY_GATEWAY``)."""
        return f"{super().url}/gateway.do"

    # --- fault switches ----------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Answer the next ``n`` gateway requests with HTTP ``status`` and an HTML body."""
        with self._lock:
            self._faults.fail_count, self._faults.fail_status = n, status

    def business_error_next(
        self,
        method: str,
        code: str = "40004",
        sub_code: str = "ACQ.TOTAL_FEE_EXCEED",
        sub_msg: str = "订单金额超过限额",
        *,
        n: int = 1,
    ) -> None:
        """Answer the next ``n`` calls of ``method`` with this (signed) error code."""
        msg = {"20000": "Service Currently Unavailable", "40004": "Business Failed"}.get(
            code, "Invalid Arguments"
        )
        body = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}
        with self._lock:
            self._faults.business_error = _InjectedError(method, body)
            self._faults.business_error_count = n

    def set_faults(
        self,
        *,
        hang: float | None = None,
        bad_response_sign: bool | None = None,
        unsigned_responses: bool | None = None,
    ) -> None:
        """``hang``: sleep before answering; ``bad_response_sign``: sign responses with a
        key that is not Alipay's; ``unsigned_responses``: leave ``sign`` out."""
        with self._lock:
            f = self._faults
            if hang is not None:
                f.hang = hang
            if bad_response_sign is not None:
                f.bad_response_sign = bad_response_sign
            if unsigned_responses is not None:
                f.unsigned_responses = unsigned_responses

    def reset(self) -> None:
        """Forget faults, trades and counters (between tests)."""
        with self._lock:
            self._faults = _Faults()
            self._trades.clear()
            self._calls.clear()
            self._requests.clear()

    # --- the buyer's side --------------------------------------------------------------

    def trade(self, out_trade_no: str) -> Trade | None:
        """A copy of the trade as the gateway holds it."""
        with self._lock:
            trade = self._trades.get(out_trade_no)
            return replace(trade) if trade else None

    def scan(self, out_trade_no: str) -> Trade:
        """The buyer scanned the QR code: the trade exists (WAIT_BUYER_PAY) for query/close."""
        with self._lock:
            trade = self._require(out_trade_no)
            trade.visible = True
            return replace(trade)

    def pay(
        self,
        out_trade_no: str,
        *,
        trade_status: str = "TRADE_SUCCESS",
        notify_id: str | None = None,
    ) -> bytes:
        """The buyer paid: mark the trade paid and return the notify body Alipay would POST to
        its ``notify_url`` (signed with the Alipay private key, the trade's own amount)."""
        with self._lock:
            trade = self._require(out_trade_no)
            if trade.status == "TRADE_CLOSED":
                raise AssertionError(f"trade {out_trade_no} is closed; it cannot be paid")
            trade.visible = True
            trade.status = trade_status
            trade.gmt_payment = beijing_now().strftime(TIME_FORMAT)
            snapshot = replace(trade)
        return self.notify_body(snapshot, notify_id=notify_id)

    def close(self, out_trade_no: str) -> bytes:
        """Alipay closed the trade (timeout_express elapsed); return its TRADE_CLOSED notify."""
        with self._lock:
            trade = self._require(out_trade_no)
            trade.visible = True
            trade.status = "TRADE_CLOSED"
            snapshot = replace(trade)
        return self.notify_body(snapshot)

    def notify_body(self, trade: Trade, *, notify_id: str | None = None) -> bytes:
        """The signed notify body for ``trade`` in its current status."""
        return build_notify(
            trade.out_trade_no,
            alipay_private_key=self._alipay_private_key,
            app_id=self.app_id,
            seller_id=self.seller_id,
            total_amount=trade.total_amount,
            trade_status=trade.status,
            notify_id=notify_id,
            trade_no=trade.trade_no,
        )

    def _require(self, out_trade_no: str) -> Trade:
        trade = self._trades.get(out_trade_no)
        if trade is None:
            raise AssertionError(f"no trade {out_trade_no} at the Alipay double")
        return trade

    # --- counters ----------------------------------------------------------------------

    def calls(self, method: str) -> int:
        """Gateway requests received for e.g. ``"alipay.trade.precreate"``."""
        with self._lock:
            return self._calls[method]

    def requests(self) -> list[dict[str, str]]:
        """Every request's parameters, in order (signature included)."""
        with self._lock:
            return [dict(r) for r in self._requests]

    # --- request handling --------------------------------------------------------------

    def handle(self, http_method: str, path: str, query: str, body: bytes) -> Response:
        with self._lock:
            faults = replace(self._faults)
            if self._faults.fail_count > 0:
                self._faults.fail_count -= 1
        if faults.hang:
            self._stopping.wait(faults.hang)
        if faults.fail_count > 0:
            return faults.fail_status, "text/html", b"<html><body>Gateway Error</body></html>"
        if path != "/gateway.do":
            return 404, "text/html", b"<html><body>Not Found</body></html>"
        try:
            params = parse_form(query)
            if http_method == "POST" and body:
                params.update(parse_form(body.decode("utf-8")))
        except (ValueError, UnicodeDecodeError):
            return 400, "text/html", b"<html><body>Bad Request</body></html>"
        method = params.get("method", "")
        response_key = method.replace(".", "_") + "_response" if method else "error_response"
        with self._lock:
            self._calls[method] += 1
            self._requests.append(dict(params))
        try:
            self._check_request(params)
            biz = self._biz_content(params)
            if method == "alipay.trade.page.pay":
                return self._page_pay(params, biz)
            injected = self._injected_error(method, faults)
            result = injected or self._dispatch(method, params, biz)
        except _GatewayError as exc:
            # Gateway-level rejections (bad app id / signature / arguments) are not signed.
            text = json.dumps({response_key: exc.body}, ensure_ascii=False)
            return 200, "text/html;charset=utf-8", text.encode()
        return 200, "text/html;charset=utf-8", self._signed(response_key, result, faults)

    def _check_request(self, params: dict[str, str]) -> None:
        if not params.get("method"):
            raise _GatewayError("40001", "Missing Required Arguments", "isv.missing-method", "")
        if params.get("app_id") != self.app_id:
            raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID")
        if params.get("sign_type") != "RSA2":
            raise _GatewayError(
                "40002", "Invalid Arguments", "isv.invalid-signature-type", "无效的签名类型"
            )
        if params.get("charset", "").lower() != "utf-8":
            raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-charset", "字符集错误")
        try:
            sent = datetime.strptime(params.get("timestamp", ""), TIME_FORMAT)
        except ValueError:
            raise _GatewayError(
                "40002", "Invalid Arguments", "isv.invalid-timestamp", "非法的时间戳参数"
            ) from None
        if abs(sent.replace(tzinfo=BEIJING) - beijing_now()) > TIMESTAMP_TOLERANCE:
            raise _GatewayError(
                "40002", "Invalid Arguments", "isv.invalid-timestamp", "时间戳超出允许范围"
            )
        if not verify_request(params, self._app_public_key):
            raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-signature", "验签出错")

    @staticmethod
    def _biz_content(params: dict[str, str]) -> dict[str, Any]:
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            biz = None
        if not isinstance(biz, dict):
            raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-parameter", "")
        return biz

    def _injected_error(self, method: str, faults: _Faults) -> dict[str, str] | None:
        injected = faults.business_error
        if injected is None or injected.method != method:
            return None
        with self._lock:
            if self._faults.business_error_count <= 0:
                return None
            self._faults.business_error_count -= 1
        return dict(injected.body)

    def _dispatch(self, method: str, params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        if method == "alipay.trade.precreate":
            return self._precreate(params, biz)
        if method == "alipay.trade.query":
            return self._query(biz)
        if method == "alipay.trade.close":
            return self._close(biz)
        raise _GatewayError("40002", "Invalid Arguments", "isv.invalid-method", "不存在的方法名")

    def _new_trade(self, params: dict[str, str], biz: dict[str, Any]) -> Trade | dict[str, str]:
        """Find or create the trade of a payment request; a dict is a business error."""
        out_trade_no = str(biz.get("out_trade_no") or "")
        total = str(biz.get("total_amount") or "")
        subject = str(biz.get("subject") or "")
        if not out_trade_no or not total or not subject:
            raise _GatewayError("40004", "Business Failed", "ACQ.INVALID_PARAMETER", "参数无效")
        if not _valid_amount(total):
            return _business_error("ACQ.INVALID_PARAMETER", "total_amount 格式错误")
        with self._lock:
            trade = self._trades.get(out_trade_no)
            if trade is None:
                trade = Trade(
                    out_trade_no=out_trade_no,
                    total_amount=total,
                    subject=subject,
                    notify_url=params.get("notify_url"),
                    method=params["method"],
                    biz_content=dict(biz),
                )
                self._trades[out_trade_no] = trade
                return replace(trade)
            if trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                return _business_error("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if trade.status == "TRADE_CLOSED":
                return _business_error("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if Decimal(trade.total_amount) != Decimal(total) or trade.subject != subject:
                return _business_error("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            return replace(trade)

    def _precreate(self, params: dict[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._new_trade(params, biz)
        if isinstance(trade, dict):
            return trade
        with self._lock:
            stored = self._trades[trade.out_trade_no]
            if stored.qr_code is None:
                stored.qr_code = "https://qr.alipay.com/bax0" + secrets.token_hex(10)
            qr_code = stored.qr_code
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": trade.out_trade_no,
            "qr_code": qr_code,
        }

    def _page_pay(self, params: dict[str, str], biz: dict[str, Any]) -> Response:
        trade = self._new_trade(params, biz)
        if isinstance(trade, dict):
            text = json.dumps(trade, ensure_ascii=False)
            return 200, "text/html;charset=utf-8", f"<html><body>{text}</body></html>".encode()
        page = (
            "<html><head><title>支付宝 - 网上支付</title></head><body>"
            f"<p>{trade.subject}</p><p>{trade.total_amount}</p></body></html>"
        )
        return 200, "text/html;charset=utf-8", page.encode()

    def _find(self, biz: dict[str, Any]) -> Trade | None:
        out_trade_no, trade_no = biz.get("out_trade_no"), biz.get("trade_no")
        if not out_trade_no and not trade_no:
            raise _GatewayError("40004", "Business Failed", "ACQ.INVALID_PARAMETER", "参数无效")
        for trade in self._trades.values():
            if trade.visible and (
                trade.out_trade_no == out_trade_no or (trade_no and trade.trade_no == trade_no)
            ):
                return trade
        return None

    def _query(self, biz: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            trade = self._find(biz)
            if trade is None:
                return _business_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
            paid = trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED")
            result: dict[str, Any] = {
                "code": "10000",
                "msg": "Success",
                "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
                "buyer_logon_id": "csq***@sandbox.com",
                "trade_status": trade.status,
                "total_amount": trade.total_amount,
                "buyer_pay_amount": trade.total_amount if paid else "0.00",
                "point_amount": "0.00",
                "invoice_amount": trade.total_amount if paid else "0.00",
                "receipt_amount": trade.total_amount if paid else "0.00",
                "buyer_user_id": "2088102177846880",
            }
            if paid:
                result["send_pay_date"] = trade.gmt_payment
                result["fund_bill_list"] = [
                    {"amount": trade.total_amount, "fund_channel": "ALIPAYACCOUNT"}
                ]
            return result

    def _close(self, biz: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            trade = self._find(biz)
            if trade is None:
                return _business_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
            if trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                return _business_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            trade.status = "TRADE_CLOSED"
            return {
                "code": "10000",
                "msg": "Success",
                "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
            }

    def _signed(self, response_key: str, result: dict[str, Any], faults: _Faults) -> bytes:
        content = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        if faults.unsigned_responses:
            return ('{"' + response_key + '":' + content + "}").encode()
        key = _impostor_key() if faults.bad_response_sign else self._alipay_private_key
        sign = rsa2_sign(content, key)
        return ('{"' + response_key + '":' + content + ',"sign":"' + sign + '"}').encode()


@functools.cache
def _impostor_key() -> str:
    """A private key that is not Alipay's (for forged responses)."""
    return rsa_key_pair()[0]


def _valid_amount(value: str) -> bool:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return False
    return (
        amount.is_finite()
        and amount.as_tuple().exponent in (0, -1, -2)
        and Decimal("0.01") <= amount <= Decimal("100000000")
    )


def _handler_for(double: AlipayDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(DoubleRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            body = self.read_body()
            status, content_type, payload = double.handle(method, parts.path, parts.query, body)
            try:
                self.send_body(status, payload, content_type)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up first (its timeout is what a hang test exercises).
                self.close_connection = True

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_SELLER_ID",
    "NOTIFY_HEADERS",
    "AlipayDouble",
    "AlipayKeys",
    "Trade",
    "bare_base64",
    "beijing_now",
    "build_notify",
    "make_keys",
    "notify_params",
    "parse_form",
    "request_sign_content",
    "rsa2_sign",
    "rsa2_verify",
    "sign_content",
    "verify_request",
]
