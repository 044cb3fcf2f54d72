"""WeChatPayProvider against the local WeChat Pay v3 double (real HTTP, real RSA/AES-GCM)."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from app.errors import PermanentError, TransientError
from app.integrations.payments.base import (
    CheckoutRequest,
    EventKind,
    InvalidWebhookError,
    OrderRef,
    OrderState,
    ProviderNotConfiguredError,
    WebhookRequest,
)
from app.integrations.payments.wechat import WeChatPayProvider
from tests.support.payments.wechat_double import (
    WeChatKeys,
    WeChatPayDouble,
    build_notification,
    make_api_v3_key,
    make_keys,
    rsa_sign,
    transaction_resource,
)

NOW = 1_800_000_000  # a fixed clock for the freshness boundary tests


@pytest.fixture(scope="module")
def keys() -> WeChatKeys:
    return make_keys()


@pytest.fixture(scope="module")
def other_keys() -> WeChatKeys:
    """Key pairs nobody configured: a forger's platform key, a wrong merchant key."""
    return make_keys()


@pytest.fixture(scope="module")
def double(keys: WeChatKeys) -> Iterator[WeChatPayDouble]:
    with WeChatPayDouble(keys) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_double(double: WeChatPayDouble) -> Iterator[None]:
    double.reset()
    yield
    double.reset()


# One per module: loading its RSA keys costs a large part of a second, and a provider
# keeps no state between calls (the double is reset around each test).
@pytest.fixture(scope="module")
def provider(double: WeChatPayDouble) -> WeChatPayProvider:
    built = WeChatPayProvider.from_env(double.provider_env())
    built.timeout = (1.0, 2.0)
    return built


def make_provider(double: WeChatPayDouble, **overrides: Any) -> WeChatPayProvider:
    kwargs: dict[str, Any] = {
        "mchid": double.mchid,
        "appid": double.appid,
        "api_v3_key": double.api_v3_key,
        "merchant_private_key": double.keys.merchant_private_key,
        "merchant_cert_serial": double.keys.merchant_serial,
        "platform_public_keys": {double.keys.platform_key_id: double.keys.platform_public_key},
        "api_base": double.url,
        "timeout": (1.0, 2.0),
    }
    kwargs.update(overrides)
    return WeChatPayProvider(**kwargs)


def checkout(
    order_id: str | None = None, *, amount: int = 19900, currency: str = "CNY"
) -> CheckoutRequest:
    return CheckoutRequest(
        order_id=order_id or str(uuid.uuid4()),
        user_id=str(uuid.uuid4()),
        user_email="dev@example.com",
        plan_id="basic",
        plan_name="Basic",
        billing_cycle="monthly",
        amount=amount,
        currency=currency,
        notify_url="https://vibebox.example/api/subscriptions/webhook/wechat",
        return_url="https://vibebox.example/",
    )


def order_ref(request: CheckoutRequest) -> OrderRef:
    return OrderRef(
        order_id=request.order_id,
        provider_order_id=request.order_ref,
        amount=request.amount,
        currency=request.currency,
    )


def notification(
    double: WeChatPayDouble, out_trade_no: str | None = None, **overrides: Any
) -> WebhookRequest:
    """A notification signed and encrypted with the double's (= the configured) keys."""
    kwargs: dict[str, Any] = {
        "platform_private_key": double.keys.platform_private_key,
        "serial": double.keys.platform_key_id,
        "api_v3_key": double.api_v3_key,
        "amount": 19900,
        "mchid": double.mchid,
        "appid": double.appid,
    }
    kwargs.update(overrides)
    headers, body = build_notification(out_trade_no or uuid.uuid4().hex, **kwargs)
    return WebhookRequest(headers=headers, body=body)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- create_order ------------------------------------------------------------------------


def test_create_order_places_a_signed_native_order_and_returns_the_code_url(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()

    session = provider.create_order(request)

    assert session.provider_order_id == request.order_ref
    assert session.qr_code_url is not None
    assert session.qr_code_url.startswith("weixin://wxpay/bizpayurl?pr=")
    assert session.checkout_url is None
    seen = double.requests
    assert [(r.method, r.target, r.signature_ok) for r in seen] == [
        ("POST", "/v3/pay/transactions/native", True)
    ]
    held = double.order(request.order_ref)
    assert held is not None
    assert held["code_url"] == session.qr_code_url
    assert held["description"] == "VibeBox Basic (monthly)"
    assert held["amount"] == {"total": 19900, "currency": "CNY"}
    assert held["notify_url"] == request.notify_url
    assert (held["mchid"], held["appid"]) == (double.mchid, double.appid)


def test_create_order_twice_for_the_same_order_gets_the_same_code_url(
    provider: WeChatPayProvider,
) -> None:
    request = checkout()

    first = provider.create_order(request)
    again = provider.create_order(request)

    assert again == first


def test_create_order_with_a_wrong_merchant_key_is_refused_with_401(
    double: WeChatPayDouble, other_keys: WeChatKeys
) -> None:
    provider = make_provider(double, merchant_private_key=other_keys.merchant_private_key)

    with pytest.raises(PermanentError) as excinfo:
        provider.create_order(checkout())

    assert "401" in str(excinfo.value)
    assert "SIGN_ERROR" in str(excinfo.value)
    assert [r.signature_ok for r in double.requests] == [False]


def test_create_order_in_a_currency_other_than_cny_is_permanent_and_calls_nothing(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    with pytest.raises(PermanentError) as excinfo:
        provider.create_order(checkout(currency="USD"))

    assert "CNY" in str(excinfo.value)
    assert "USD" in str(excinfo.value)
    assert "CNY" in excinfo.value.safe_message
    assert double.requests == []


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_create_order_when_wechat_fails_or_throttles_is_transient(
    provider: WeChatPayProvider, double: WeChatPayDouble, status: int
) -> None:
    double.fail_next(1, status=status)

    with pytest.raises(TransientError) as excinfo:
        provider.create_order(checkout())

    assert str(status) in str(excinfo.value)


def test_create_order_refused_with_4xx_is_permanent(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    double.fail_next(1, status=400)

    with pytest.raises(PermanentError) as excinfo:
        provider.create_order(checkout())

    assert not isinstance(excinfo.value, TransientError)


def test_create_order_that_times_out_is_transient(
    double: WeChatPayDouble,
) -> None:
    provider = make_provider(double, timeout=(1.0, 0.3))
    double.set_hang(2.0)

    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        provider.create_order(checkout())

    assert time.monotonic() - started < 1.5


def test_create_order_when_wechat_is_unreachable_is_transient(double: WeChatPayDouble) -> None:
    provider = make_provider(double, api_base=closed_port_url())

    with pytest.raises(TransientError, match="ConnectionError"):
        provider.create_order(checkout())


@pytest.mark.parametrize("mode", ["forged", "missing"])
def test_create_order_answer_not_signed_by_the_platform_key_is_rejected(
    provider: WeChatPayProvider, double: WeChatPayDouble, mode: str
) -> None:
    double.set_response_signature(mode)

    with pytest.raises(PermanentError, match="not signed by an accepted platform key"):
        provider.create_order(checkout())


def test_errors_never_carry_keys(
    double: WeChatPayDouble, other_keys: WeChatKeys, provider: WeChatPayProvider
) -> None:
    wrong = make_provider(double, merchant_private_key=other_keys.merchant_private_key)
    double.fail_next(1, status=503)
    messages = [repr(provider), repr(wrong)]
    for call in (provider.create_order, wrong.create_order):
        with pytest.raises(PermanentError if call == wrong.create_order else TransientError) as e:
            call(checkout())
        messages += [str(e.value), e.value.safe_message]

    secrets_ = [double.api_v3_key, "PRIVATE KEY", double.keys.merchant_private_key[40:80]]
    for message in messages:
        for secret in secrets_:
            assert secret not in message


# --- handle_callback -------------------------------------------------------------------


def test_valid_notification_is_one_paid_event_for_our_order(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()
    provider.create_order(request)
    transaction_id = double.pay(request.order_ref)
    headers, body = double.notification(request.order_ref, notification_id="EV-0001")

    events = provider.handle_callback(WebhookRequest(headers=headers, body=body))

    assert len(events) == 1
    event = events[0]
    assert event.kind is EventKind.PAID
    assert event.provider == "wechat"
    assert event.event_id == "EV-0001"
    assert event.type == "TRANSACTION.SUCCESS"
    assert event.order_id == request.order_id
    assert event.provider_order_id == request.order_ref
    assert (event.amount, event.currency) == (19900, "CNY")
    assert event.occurred_at is not None
    assert event.occurred_at.tzinfo is not None
    assert event.payload["transaction_id"] == transaction_id
    assert event.payload["trade_state"] == "SUCCESS"
    assert "payer" not in event.payload


def test_notification_headers_are_read_case_insensitively(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    valid = notification(double)
    lowered = {k.lower(): v for k, v in valid.headers.items()}

    variants: list[Any] = [lowered, Headers(list(valid.headers.items()))]
    for headers in variants:
        events = provider.handle_callback(WebhookRequest(headers=headers, body=valid.body))
        assert [e.kind for e in events] == [EventKind.PAID]


def test_notification_verification_needs_no_network(double: WeChatPayDouble) -> None:
    provider = make_provider(double, api_base=closed_port_url())

    events = provider.handle_callback(notification(double))

    assert [e.kind for e in events] == [EventKind.PAID]
    assert double.requests == []


def test_notification_signed_under_a_second_accepted_key_id_is_accepted(
    double: WeChatPayDouble, other_keys: WeChatKeys
) -> None:
    provider = WeChatPayProvider.from_env(
        {
            **double.provider_env(),
            "WECHAT_PAY_PUBLIC_KEY": double.keys.platform_public_key
            + other_keys.platform_public_key,
            "WECHAT_PAY_PUBLIC_KEY_ID": f"{double.keys.platform_key_id}, NEXT_KEY",
        }
    )

    rotated = notification(
        double, platform_private_key=other_keys.platform_private_key, serial="NEXT_KEY"
    )

    assert [e.kind for e in provider.handle_callback(rotated)] == [EventKind.PAID]
    assert [e.kind for e in provider.handle_callback(notification(double))] == [EventKind.PAID]


def _forged_signature(double: WeChatPayDouble) -> WebhookRequest:
    valid = notification(double)
    headers = dict(valid.headers)
    headers["Wechatpay-Signature"] = rsa_sign(
        double.keys.platform_private_key, "a different message\n"
    )
    return WebhookRequest(headers=headers, body=valid.body)


def _body_changed_after_signing(double: WeChatPayDouble) -> WebhookRequest:
    valid = notification(double)
    body = json.loads(valid.body)
    body["id"] = "EV-REPLAYED"
    return WebhookRequest(headers=valid.headers, body=json.dumps(body).encode())


def _tampered_ciphertext(double: WeChatPayDouble, other_keys: WeChatKeys) -> WebhookRequest:
    """Ciphertext bytes flipped, then re-signed: only the GCM tag can catch it."""
    valid = notification(double)
    body = json.loads(valid.body)
    raw = bytearray(base64.b64decode(body["resource"]["ciphertext"]))
    raw[5] ^= 0x01
    body["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    text = json.dumps(body, ensure_ascii=False)
    ts, nonce = valid.headers["Wechatpay-Timestamp"], valid.headers["Wechatpay-Nonce"]
    headers = dict(valid.headers)
    headers["Wechatpay-Signature"] = rsa_sign(
        double.keys.platform_private_key, f"{ts}\n{nonce}\n{text}\n"
    )
    return WebhookRequest(headers=headers, body=text.encode())


def _with_header(request: WebhookRequest, name: str, value: str) -> WebhookRequest:
    return WebhookRequest(headers={**request.headers, name: value}, body=request.body)


def _signed(double: WeChatPayDouble, text: str) -> WebhookRequest:
    ts, nonce = str(int(time.time())), "n0nce"
    return WebhookRequest(
        headers={
            "Wechatpay-Timestamp": ts,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Serial": double.keys.platform_key_id,
            "Wechatpay-Signature": rsa_sign(
                double.keys.platform_private_key, f"{ts}\n{nonce}\n{text}\n"
            ),
        },
        body=text.encode(),
    )


INVALID_NOTIFICATIONS = {
    "forged signature": lambda d, o: _forged_signature(d),
    "signature of another body": lambda d, o: _body_changed_after_signing(d),
    "wrong platform key": lambda d, o: notification(d, platform_private_key=o.platform_private_key),
    "unknown serial": lambda d, o: notification(d, serial="PUB_KEY_ID_UNKNOWN"),
    "stale timestamp": lambda d, o: notification(d, timestamp=int(time.time()) - 301),
    "timestamp from the future": lambda d, o: notification(d, timestamp=int(time.time()) + 400),
    "tampered ciphertext": _tampered_ciphertext,
    "wrong api v3 key": lambda d, o: notification(d, api_v3_key=make_api_v3_key()),
    "wrong mchid": lambda d, o: notification(d, mchid="1999999999"),
    "wrong appid": lambda d, o: notification(d, appid="wx0000000000000000"),
    "malformed body": lambda d, o: _signed(d, "{not json"),
    "body not an object": lambda d, o: _signed(d, "[1, 2]"),
    "no resource": lambda d, o: _signed(
        d, json.dumps({"id": "x", "event_type": "TRANSACTION.SUCCESS"})
    ),
    "plaintext resource": lambda d, o: _signed(
        d,
        json.dumps(
            {
                "id": "x",
                "event_type": "TRANSACTION.SUCCESS",
                "resource_type": "encrypt-resource",
                "resource": {"algorithm": "NONE", "ciphertext": "{}", "nonce": "abc"},
            }
        ),
    ),
    "missing headers": lambda d, o: WebhookRequest(headers={}, body=notification(d).body),
    "timestamp not a number": lambda d, o: _with_header(
        notification(d), "Wechatpay-Timestamp", "soon"
    ),
    "other signature type": lambda d, o: _with_header(
        notification(d), "Wechatpay-Signature-Type", "SM2"
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_NOTIFICATIONS))
def test_invalid_notification_is_rejected(
    provider: WeChatPayProvider, double: WeChatPayDouble, other_keys: WeChatKeys, case: str
) -> None:
    request = INVALID_NOTIFICATIONS[case](double, other_keys)

    with pytest.raises(InvalidWebhookError) as excinfo:
        provider.handle_callback(request)

    assert excinfo.value.reason
    assert double.api_v3_key not in excinfo.value.reason


@pytest.mark.parametrize("offset", [-300, 300])
def test_notification_exactly_300_seconds_off_is_still_fresh(
    double: WeChatPayDouble, offset: int
) -> None:
    provider = make_provider(double, clock=lambda: float(NOW))

    events = provider.handle_callback(notification(double, timestamp=NOW + offset))

    assert [e.kind for e in events] == [EventKind.PAID]


@pytest.mark.parametrize("offset", [-301, 301])
def test_notification_more_than_300_seconds_off_is_stale(
    double: WeChatPayDouble, offset: int
) -> None:
    provider = make_provider(double, clock=lambda: float(NOW))

    with pytest.raises(InvalidWebhookError, match="stale"):
        provider.handle_callback(notification(double, timestamp=NOW + offset))


def test_a_full_refund_notification_is_refunded_and_verified(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    out_trade_no = uuid.uuid4().hex
    refund = {
        "mchid": double.mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000000000000000000001",
        "out_refund_no": "R1",
        "refund_id": "50000000000000000000000000001",
        "refund_status": "SUCCESS",
        "user_received_account": "招商银行信用卡0403",
        "amount": {"total": 19900, "refund": 19900, "payer_total": 19900, "payer_refund": 19900},
    }

    events = provider.handle_callback(
        notification(double, event_type="REFUND.SUCCESS", resource=refund, notification_id="R-1")
    )

    assert len(events) == 1
    assert events[0].kind is EventKind.REFUNDED
    assert (events[0].amount, events[0].currency) == (19900, "CNY")
    assert (events[0].event_id, events[0].type) == ("R-1", "REFUND.SUCCESS")
    assert events[0].order_id == str(uuid.UUID(hex=out_trade_no))
    assert "user_received_account" not in events[0].payload
    partial = {**refund, "amount": {**refund["amount"], "refund": 100, "payer_refund": 100}}
    [event] = provider.handle_callback(
        notification(double, event_type="REFUND.SUCCESS", resource=partial)
    )
    assert event.kind is EventKind.IGNORED  # a partial refund is recorded, not applied
    with pytest.raises(InvalidWebhookError):
        provider.handle_callback(
            notification(
                double,
                event_type="REFUND.SUCCESS",
                resource={**refund, "mchid": "1999999999"},
            )
        )


def test_transaction_event_without_success_state_is_ignored(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    events = provider.handle_callback(notification(double, trade_state="PAYERROR"))

    assert [e.kind for e in events] == [EventKind.IGNORED]


def test_notification_for_an_out_trade_no_that_is_not_ours_has_no_order_id(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    events = provider.handle_callback(notification(double, "LEGACY-12345"))

    assert events[0].kind is EventKind.PAID
    assert events[0].order_id is None
    assert events[0].provider_order_id == "LEGACY-12345"


def test_paid_notification_without_amount_is_rejected(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    resource = transaction_resource(
        uuid.uuid4().hex, amount=1, mchid=double.mchid, appid=double.appid
    )
    del resource["amount"]

    with pytest.raises(InvalidWebhookError, match="amount"):
        provider.handle_callback(notification(double, resource=resource))


# --- query_order -------------------------------------------------------------------------


def test_query_of_an_unpaid_order_is_pending(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()
    provider.create_order(request)

    answer = provider.query_order(order_ref(request))

    assert answer.state is OrderState.PENDING
    assert answer.event is None
    assert double.calls("GET query") == 1
    assert all(r.signature_ok for r in double.requests)


def test_query_of_a_paid_order_is_paid_with_a_stable_synthetic_event(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout(amount=54900)
    provider.create_order(request)
    transaction_id = double.pay(request.order_ref)

    first = provider.query_order(order_ref(request))
    again = provider.query_order(order_ref(request))

    assert first.state is OrderState.PAID
    assert first.event is not None
    assert first.event.event_id == f"query:{request.order_ref}:{transaction_id}"
    assert first.event.kind is EventKind.PAID
    assert first.event.order_id == request.order_id
    assert first.event.provider_order_id == request.order_ref
    assert (first.event.amount, first.event.currency) == (54900, "CNY")
    assert "payer" not in first.event.payload
    assert again.event is not None
    assert again.event.event_id == first.event.event_id


@pytest.mark.parametrize(
    ("trade_state", "expected"),
    [
        ("USERPAYING", OrderState.PENDING),
        ("CLOSED", OrderState.FAILED),
        ("REVOKED", OrderState.FAILED),
        ("PAYERROR", OrderState.FAILED),
    ],
)
def test_query_maps_trade_states(
    provider: WeChatPayProvider,
    double: WeChatPayDouble,
    trade_state: str,
    expected: OrderState,
) -> None:
    request = checkout()
    provider.create_order(request)
    double.set_trade_state(request.order_ref, trade_state)

    answer = provider.query_order(order_ref(request))

    assert answer.state is expected
    assert answer.event is None


def test_query_of_an_order_wechat_does_not_know_is_unknown(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    answer = provider.query_order(order_ref(checkout()))

    assert answer.state is OrderState.UNKNOWN
    assert double.calls("GET query") == 1


def test_query_when_wechat_fails_is_transient(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    double.fail_next(1, status=503)

    with pytest.raises(TransientError):
        provider.query_order(order_ref(checkout()))


def test_query_answer_with_a_forged_signature_is_rejected(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()
    provider.create_order(request)
    double.pay(request.order_ref)
    double.set_response_signature("forged")

    with pytest.raises(PermanentError, match="not signed"):
        provider.query_order(order_ref(request))


# --- cancel_order / cancel_subscription / replies ------------------------------------


def test_cancel_order_closes_it_at_wechat(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()
    provider.create_order(request)

    provider.cancel_order(order_ref(request))

    held = double.order(request.order_ref)
    assert held is not None
    assert held["trade_state"] == "CLOSED"
    assert provider.query_order(order_ref(request)).state is OrderState.FAILED


def test_cancel_order_unknown_or_already_closed_is_a_no_op(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()
    provider.cancel_order(order_ref(request))  # unknown at WeChat
    provider.create_order(request)
    provider.cancel_order(order_ref(request))
    provider.cancel_order(order_ref(request))  # already closed

    assert double.calls("POST close") == 3


def test_cancel_order_that_is_already_paid_is_permanent(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    request = checkout()
    provider.create_order(request)
    double.pay(request.order_ref)

    with pytest.raises(PermanentError, match="already paid"):
        provider.cancel_order(order_ref(request))


def test_cancel_subscription_is_a_no_op(
    provider: WeChatPayProvider, double: WeChatPayDouble
) -> None:
    provider.cancel_subscription("anything", at_period_end=True)

    assert double.requests == []


def test_ack_is_204_and_nack_is_wechat_fail_body(provider: WeChatPayProvider) -> None:
    ack = provider.ack()
    nack = provider.nack("签名错误")

    assert (ack.status, ack.body) == (204, "")
    assert nack.status == 400
    assert json.loads(nack.body) == {"code": "FAIL", "message": "签名错误"}


# --- from_env --------------------------------------------------------------------------


def test_from_env_with_nothing_set_names_every_missing_variable() -> None:
    with pytest.raises(ProviderNotConfiguredError) as excinfo:
        WeChatPayProvider.from_env({})

    message = str(excinfo.value)
    for name in (
        "WECHAT_PAY_MCHID",
        "WECHAT_PAY_APPID",
        "WECHAT_PAY_API_KEY",
        "WECHAT_PAY_MCH_CERT_SERIAL",
        "WECHAT_PAY_MCH_PRIVATE_KEY",
        "WECHAT_PAY_PUBLIC_KEY",
        "WECHAT_PAY_PUBLIC_KEY_ID",
    ):
        assert name in message


def test_from_env_names_only_the_missing_variable(double: WeChatPayDouble) -> None:
    env = double.provider_env()
    del env["WECHAT_PAY_APPID"]
    env["WECHAT_PAY_PUBLIC_KEY_ID"] = "  "

    with pytest.raises(ProviderNotConfiguredError) as excinfo:
        WeChatPayProvider.from_env(env)

    assert str(excinfo.value) == (
        "WeChat Pay is not configured: missing WECHAT_PAY_APPID, WECHAT_PAY_PUBLIC_KEY_ID"
    )


def test_from_env_reads_keys_from_files_and_defaults_the_api_base(
    double: WeChatPayDouble, tmp_path: Path
) -> None:
    private_file = tmp_path / "apiclient_key.pem"
    public_file = tmp_path / "pub_key.pem"
    private_file.write_text(double.keys.merchant_private_key)
    public_file.write_text(double.keys.platform_public_key)
    env = double.provider_env()
    del env["WECHAT_PAY_MCH_PRIVATE_KEY"], env["WECHAT_PAY_PUBLIC_KEY"]
    del env["WECHAT_PAY_API_BASE"]
    env["WECHAT_PAY_MCH_PRIVATE_KEY_FILE"] = str(private_file)
    env["WECHAT_PAY_PUBLIC_KEY_FILE"] = str(public_file)

    provider = WeChatPayProvider.from_env(env)

    assert provider.api_base == "https://api.mch.weixin.qq.com"
    assert [e.kind for e in provider.handle_callback(notification(double))] == [EventKind.PAID]


def test_from_env_accepts_pem_with_escaped_newlines(double: WeChatPayDouble) -> None:
    env = double.provider_env()
    env["WECHAT_PAY_MCH_PRIVATE_KEY"] = double.keys.merchant_private_key.replace("\n", "\\n")
    env["WECHAT_PAY_PUBLIC_KEY"] = double.keys.platform_public_key.replace("\n", "\\n")

    provider = WeChatPayProvider.from_env(env)

    assert provider.create_order(checkout()).qr_code_url


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WECHAT_PAY_API_KEY", "too-short", "32-character"),
        ("WECHAT_PAY_MCH_PRIVATE_KEY", "not a key", "WECHAT_PAY_MCH_PRIVATE_KEY"),
        ("WECHAT_PAY_PUBLIC_KEY", "not a key", "WECHAT_PAY_PUBLIC_KEY"),
        ("WECHAT_PAY_MCH_PRIVATE_KEY_FILE", "/nonexistent/key.pem", "cannot read"),
    ],
)
def test_from_env_with_an_invalid_setting_is_not_configured(
    double: WeChatPayDouble, variable: str, value: str, expected: str
) -> None:
    env = double.provider_env()
    if variable.endswith("_FILE"):
        del env[variable.removesuffix("_FILE")]
    env[variable] = value

    with pytest.raises(ProviderNotConfiguredError, match=expected) as excinfo:
        WeChatPayProvider.from_env(env)

    assert double.api_v3_key not in str(excinfo.value)


def test_from_env_with_more_ids_than_keys_is_not_configured(double: WeChatPayDouble) -> None:
    keys_two = double.keys.platform_public_key * 2
    env = {**double.provider_env(), "WECHAT_PAY_PUBLIC_KEY": keys_two}
    env["WECHAT_PAY_PUBLIC_KEY_ID"] = "A,B,C"

    with pytest.raises(ProviderNotConfiguredError, match="2 keys"):
        WeChatPayProvider.from_env(env)


def test_from_env_needs_no_network(double: WeChatPayDouble) -> None:
    env = {**double.provider_env(), "WECHAT_PAY_API_BASE": closed_port_url()}

    WeChatPayProvider.from_env(env)

    assert double.requests == []


# --- the double itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer abc",
        'WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="x",signature="AAAA",'
        'timestamp="1",serial_no="00"',
    ],
)
def test_double_refuses_a_request_without_a_valid_merchant_signature(
    double: WeChatPayDouble, authorization: str | None
) -> None:
    import requests

    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    response = requests.get(
        f"{double.url}/v3/pay/transactions/out-trade-no/abcdef?mchid={double.mchid}",
        headers=headers,
        timeout=5,
    )

    assert response.status_code == 401
    assert response.json()["code"] == "SIGN_ERROR"
    assert response.headers["Wechatpay-Serial"] == double.keys.platform_key_id
