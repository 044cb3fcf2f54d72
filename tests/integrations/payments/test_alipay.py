"""AlipayProvider against the local gateway double, and notifies signed as Alipay signs them."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from app.errors import PermanentError, TransientError
from app.integrations.payments.alipay import AlipayProvider
from app.integrations.payments.base import (
    CheckoutRequest,
    EventKind,
    InvalidWebhookError,
    OrderRef,
    OrderState,
    ProviderNotConfiguredError,
    WebhookRequest,
)
from tests.support.payments.alipay_double import (
    BEIJING,
    DEFAULT_APP_ID,
    DEFAULT_SELLER_ID,
    NOTIFY_HEADERS,
    TIME_FORMAT,
    AlipayDouble,
    AlipayKeys,
    bare_base64,
    build_notify,
    make_keys,
    notify_params,
    parse_form,
    verify_request,
)

NOTIFY_URL = "https://api.vibebox.test/api/subscriptions/webhook/alipay"
RETURN_URL = "https://app.vibebox.test/orders/return"


@pytest.fixture(scope="module")
def keys() -> AlipayKeys:
    return make_keys()


@pytest.fixture(scope="module")
def other_keys() -> AlipayKeys:
    return make_keys()


@pytest.fixture(scope="module")
def double(keys: AlipayKeys) -> Iterator[AlipayDouble]:
    with AlipayDouble(app_public_key=keys.app_public, alipay_private_key=keys.alipay_private) as d:
        yield d


@pytest.fixture(autouse=True)
def _fresh_double(double: AlipayDouble) -> Iterator[None]:
    double.reset()
    yield
    double.reset()


def _env(keys: AlipayKeys, double: AlipayDouble, **overrides: str) -> dict[str, str]:
    env = {
        "ALIPAY_APP_ID": DEFAULT_APP_ID,
        "ALIPAY_PRIVATE_KEY": keys.app_private,
        "ALIPAY_PUBLIC_KEY": keys.alipay_public,
        "ALIPAY_SELLER_ID": DEFAULT_SELLER_ID,
        "ALIPAY_GATEWAY": double.url,
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


# One per module: loading its RSA keys costs a large part of a second, and a provider
# keeps no state between calls (the double is reset around each test).
@pytest.fixture(scope="module")
def provider(keys: AlipayKeys, double: AlipayDouble) -> AlipayProvider:
    return AlipayProvider.from_env(_env(keys, double))


def _checkout(
    amount: int = 9900, currency: str = "CNY", plan_name: str = "Basic"
) -> CheckoutRequest:
    return CheckoutRequest(
        order_id=str(uuid.uuid4()),
        user_id=str(uuid.uuid4()),
        user_email="buyer@example.com",
        plan_id="basic",
        plan_name=plan_name,
        billing_cycle="monthly",
        amount=amount,
        currency=currency,
        notify_url=NOTIFY_URL,
        return_url=RETURN_URL,
    )


def _order_ref(request: CheckoutRequest) -> OrderRef:
    return OrderRef(
        order_id=request.order_id,
        provider_order_id=request.order_ref,
        amount=request.amount,
        currency=request.currency,
    )


def _notify(keys: AlipayKeys, out_trade_no: str, **kwargs: object) -> WebhookRequest:
    options: dict[str, object] = {
        "alipay_private_key": keys.alipay_private,
        "app_id": DEFAULT_APP_ID,
        "seller_id": DEFAULT_SELLER_ID,
        "total_amount": "99.00",
    }
    options.update(kwargs)
    body = build_notify(out_trade_no, **options)  # type: ignore[arg-type]
    return WebhookRequest(headers=NOTIFY_HEADERS, body=body)


# --- checkout ----------------------------------------------------------------------------


def test_precreate_returns_the_gateway_qr_code(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout(amount=9900)

    session = provider.create_order(request)

    trade = double.trade(request.order_ref)
    assert trade is not None
    assert session.provider_order_id == request.order_ref
    assert session.qr_code_url == trade.qr_code
    assert session.qr_code_url is not None
    assert session.qr_code_url.startswith("https://qr.alipay.com/")
    assert session.checkout_url is None
    assert trade.total_amount == "99.00"
    assert trade.subject == "VibeBox Basic (monthly)"
    assert trade.notify_url == NOTIFY_URL
    assert trade.biz_content["timeout_express"] == provider.timeout_express


def test_precreate_twice_for_one_order_gives_the_same_qr_code(provider: AlipayProvider) -> None:
    request = _checkout()

    first = provider.create_order(request)
    second = provider.create_order(request)

    assert first.qr_code_url == second.qr_code_url


@pytest.mark.parametrize(
    ("fen", "yuan"),
    [(1, "0.01"), (10, "0.10"), (100, "1.00"), (9900, "99.00"), (123456, "1234.56")],
)
def test_total_amount_is_yuan_with_exactly_two_decimals(
    provider: AlipayProvider, double: AlipayDouble, fen: int, yuan: str
) -> None:
    request = _checkout(amount=fen)

    provider.create_order(request)

    trade = double.trade(request.order_ref)
    assert trade is not None
    assert trade.total_amount == yuan


def test_requests_are_stamped_with_beijing_time_whatever_the_server_timezone(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    provider.create_order(_checkout())

    [sent] = double.requests()
    stamped = datetime.strptime(sent["timestamp"], TIME_FORMAT).replace(tzinfo=BEIJING)
    assert abs(stamped - datetime.now(BEIJING)) < timedelta(minutes=1)
    assert sent["sign_type"] == "RSA2"


def test_subject_drops_characters_alipay_rejects(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout(plan_name="Pro/Team & Co=")

    provider.create_order(request)

    trade = double.trade(request.order_ref)
    assert trade is not None
    assert trade.subject == "VibeBox Pro Team Co (monthly)"


def test_page_mode_returns_a_gateway_url_signed_by_the_app(
    keys: AlipayKeys, double: AlipayDouble
) -> None:
    provider = AlipayProvider.from_env(_env(keys, double, ALIPAY_MODE="page"))
    request = _checkout(amount=2990)

    session = provider.create_order(request)

    assert session.qr_code_url is None
    assert session.checkout_url is not None
    url = urlsplit(session.checkout_url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == double.url
    params = parse_form(url.query)
    assert verify_request(params, keys.app_public)
    assert not verify_request({**params, "total_amount": "0.01"}, keys.app_public)
    assert params["method"] == "alipay.trade.page.pay"
    assert params["notify_url"] == NOTIFY_URL
    assert params["return_url"] == RETURN_URL
    assert '"product_code":"FAST_INSTANT_TRADE_PAY"' in params["biz_content"]
    assert '"total_amount":"29.90"' in params["biz_content"]
    assert f'"out_trade_no":"{request.order_ref}"' in params["biz_content"]
    # The buyer's browser opening it reaches the cashier (the double checks the signature).
    page = requests.get(session.checkout_url, timeout=5)
    assert page.status_code == 200
    assert "29.90" in page.text
    assert double.trade(request.order_ref) is not None


def test_page_mode_url_signed_with_another_app_key_does_not_verify(
    keys: AlipayKeys, other_keys: AlipayKeys, double: AlipayDouble
) -> None:
    provider = AlipayProvider.from_env(
        _env(keys, double, ALIPAY_MODE="page", ALIPAY_PRIVATE_KEY=other_keys.app_private)
    )

    session = provider.create_order(_checkout())

    assert session.checkout_url is not None
    assert not verify_request(parse_form(urlsplit(session.checkout_url).query), keys.app_public)


def test_non_cny_order_is_a_permanent_error_without_calling_alipay(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    with pytest.raises(PermanentError, match="CNY only") as caught:
        provider.create_order(_checkout(currency="USD"))

    assert caught.value.safe_message == "Alipay accepts payments in CNY only."
    assert double.calls("alipay.trade.precreate") == 0


def test_gateway_http_500_is_transient(provider: AlipayProvider, double: AlipayDouble) -> None:
    double.fail_next(1, status=500)

    with pytest.raises(TransientError, match="HTTP 500"):
        provider.create_order(_checkout())


def test_gateway_http_404_is_permanent(provider: AlipayProvider, double: AlipayDouble) -> None:
    double.fail_next(1, status=404)

    with pytest.raises(PermanentError, match="HTTP 404"):
        provider.create_order(_checkout())


def test_business_error_40004_is_permanent(provider: AlipayProvider, double: AlipayDouble) -> None:
    double.business_error_next("alipay.trade.precreate", "40004", "ACQ.TOTAL_FEE_EXCEED")

    with pytest.raises(PermanentError, match=re.escape("40004 ACQ.TOTAL_FEE_EXCEED")):
        provider.create_order(_checkout())


@pytest.mark.parametrize(
    ("code", "sub_code"),
    [("20000", "isp.unknow-error"), ("20000", "aop.unknow-error"), ("40004", "ACQ.SYSTEM_ERROR")],
)
def test_service_unavailable_and_system_errors_are_transient(
    provider: AlipayProvider, double: AlipayDouble, code: str, sub_code: str
) -> None:
    double.business_error_next("alipay.trade.precreate", code, sub_code)

    with pytest.raises(TransientError, match=re.escape(sub_code)):
        provider.create_order(_checkout())


def test_gateway_that_does_not_answer_in_time_is_transient(
    keys: AlipayKeys, double: AlipayDouble
) -> None:
    provider = AlipayProvider(
        app_id=DEFAULT_APP_ID,
        app_private_key=keys.app_private,
        alipay_public_key=keys.alipay_public,
        gateway=double.url,
        timeout=(1.0, 0.3),
    )
    double.set_faults(hang=2.0)

    with pytest.raises(TransientError, match="timed out"):
        provider.create_order(_checkout())


def test_unreachable_gateway_is_transient(keys: AlipayKeys, double: AlipayDouble) -> None:
    closed = AlipayDouble(app_public_key=keys.app_public, alipay_private_key=keys.alipay_private)
    closed.start()
    url = closed.url
    closed.stop()
    provider = AlipayProvider.from_env(_env(keys, double, ALIPAY_GATEWAY=url))

    with pytest.raises(TransientError, match="ConnectionError"):
        provider.create_order(_checkout())


def test_request_signed_with_another_app_key_is_refused_by_the_gateway(
    keys: AlipayKeys, other_keys: AlipayKeys, double: AlipayDouble
) -> None:
    provider = AlipayProvider.from_env(
        _env(keys, double, ALIPAY_PRIVATE_KEY=other_keys.app_private)
    )

    with pytest.raises(PermanentError, match=re.escape("isv.invalid-signature")):
        provider.create_order(_checkout())


def test_answer_not_signed_by_alipay_is_rejected(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    double.set_faults(bad_response_sign=True)

    with pytest.raises(PermanentError, match="signature does not verify"):
        provider.create_order(_checkout())


def test_unsigned_success_answer_is_rejected(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    double.set_faults(unsigned_responses=True)

    with pytest.raises(PermanentError, match="unsigned success"):
        provider.create_order(_checkout())


# --- notifications -----------------------------------------------------------------------


def test_valid_notify_is_paid_with_amount_in_fen(
    keys: AlipayKeys, provider: AlipayProvider
) -> None:
    request = _checkout(amount=9900)
    webhook = _notify(keys, request.order_ref, total_amount="99.00", notify_id="n-1")

    [event] = provider.handle_callback(webhook)

    assert event.kind is EventKind.PAID
    assert event.provider == "alipay"
    assert event.event_id == "n-1"
    assert event.type == "TRADE_SUCCESS"
    assert event.order_id == request.order_id
    assert event.provider_order_id == request.order_ref
    assert event.amount == 9900
    assert isinstance(event.amount, int)
    assert event.currency == "CNY"
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() == timedelta(hours=8)
    assert "sign" not in event.payload
    assert event.payload["out_trade_no"] == request.order_ref


def test_trade_finished_is_paid(keys: AlipayKeys, provider: AlipayProvider) -> None:
    ref = uuid.uuid4().hex

    [event] = provider.handle_callback(_notify(keys, ref, trade_status="TRADE_FINISHED"))

    assert event.kind is EventKind.PAID


def test_paying_at_the_double_gives_a_notify_the_provider_accepts(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout(amount=12345)
    provider.create_order(request)

    body = double.pay(request.order_ref)
    [event] = provider.handle_callback(WebhookRequest(headers=NOTIFY_HEADERS, body=body))

    assert event.kind is EventKind.PAID
    assert event.order_id == request.order_id
    assert event.amount == 12345


def test_notify_with_a_forged_signature_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider
) -> None:
    params = notify_params(
        uuid.uuid4().hex,
        alipay_private_key=keys.alipay_private,
        app_id=DEFAULT_APP_ID,
        seller_id=DEFAULT_SELLER_ID,
        total_amount="99.00",
    )
    params["sign"] = "A" * 344
    webhook = WebhookRequest(headers=NOTIFY_HEADERS, body=urlencode(params).encode())

    with pytest.raises(InvalidWebhookError, match="signature"):
        provider.handle_callback(webhook)


def test_notify_signed_with_another_key_is_rejected(
    keys: AlipayKeys, other_keys: AlipayKeys, provider: AlipayProvider
) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, alipay_private_key=other_keys.alipay_private)

    with pytest.raises(InvalidWebhookError, match="signature"):
        provider.handle_callback(webhook)


def test_notify_signed_with_the_app_key_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider
) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, alipay_private_key=keys.app_private)

    with pytest.raises(InvalidWebhookError, match="signature"):
        provider.handle_callback(webhook)


def test_notify_for_another_app_id_is_rejected(keys: AlipayKeys, provider: AlipayProvider) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, app_id="2021000000009999")

    with pytest.raises(InvalidWebhookError, match="app_id"):
        provider.handle_callback(webhook)


def test_notify_for_another_seller_id_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider
) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, seller_id="2088000000009999")

    with pytest.raises(InvalidWebhookError, match="seller_id"):
        provider.handle_callback(webhook)


def test_seller_id_is_not_checked_when_not_configured(
    keys: AlipayKeys, double: AlipayDouble
) -> None:
    provider = AlipayProvider.from_env(_env(keys, double, ALIPAY_SELLER_ID=""))
    webhook = _notify(keys, uuid.uuid4().hex, seller_id="2088000000009999")

    [event] = provider.handle_callback(webhook)

    assert event.kind is EventKind.PAID


def test_notify_with_tampered_total_amount_breaks_the_signature(
    keys: AlipayKeys, provider: AlipayProvider
) -> None:
    params = notify_params(
        uuid.uuid4().hex,
        alipay_private_key=keys.alipay_private,
        app_id=DEFAULT_APP_ID,
        seller_id=DEFAULT_SELLER_ID,
        total_amount="99.00",
    )
    params["total_amount"] = "0.01"
    webhook = WebhookRequest(headers=NOTIFY_HEADERS, body=urlencode(params).encode())

    with pytest.raises(InvalidWebhookError, match="signature"):
        provider.handle_callback(webhook)


@pytest.mark.parametrize(
    "field",
    ["notify_id", "app_id", "out_trade_no", "trade_no", "trade_status", "total_amount"],
)
def test_well_signed_notify_missing_a_field_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider, field: str
) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, omit=(field,))

    with pytest.raises(InvalidWebhookError, match=f"lacks {field}"):
        provider.handle_callback(webhook)


@pytest.mark.parametrize("field", ["sign", "sign_type"])
def test_notify_without_sign_or_sign_type_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider, field: str
) -> None:
    params = notify_params(
        uuid.uuid4().hex,
        alipay_private_key=keys.alipay_private,
        app_id=DEFAULT_APP_ID,
        seller_id=DEFAULT_SELLER_ID,
        total_amount="99.00",
    )
    del params[field]

    with pytest.raises(InvalidWebhookError):
        provider.handle_callback(
            WebhookRequest(headers=NOTIFY_HEADERS, body=urlencode(params).encode())
        )


def test_notify_with_sign_type_rsa_is_rejected(keys: AlipayKeys, provider: AlipayProvider) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, extra={"sign_type": "RSA"})

    with pytest.raises(InvalidWebhookError, match="RSA2"):
        provider.handle_callback(webhook)


@pytest.mark.parametrize(
    "out_trade_no",
    [
        "VB-1234",
        "0F8FAD5BD9CB469FA16570867728950E",  # upper case: never what order_ref gives
        "0f8fad5bd9cb469fa16570867728950e0",  # 33 chars
        "0f8fad5b-d9cb-469f-a165-70867728950e",  # the dashed UUID, not the ref
    ],
)
def test_notify_for_an_out_trade_no_that_is_not_our_order_ref_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider, out_trade_no: str
) -> None:
    with pytest.raises(InvalidWebhookError, match="out_trade_no"):
        provider.handle_callback(_notify(keys, out_trade_no))


@pytest.mark.parametrize("total_amount", ["12.3.4", "-1.00", "1e3", "99.001", "abc", " 9.00"])
def test_notify_whose_total_amount_does_not_parse_is_rejected(
    keys: AlipayKeys, provider: AlipayProvider, total_amount: str
) -> None:
    with pytest.raises(InvalidWebhookError, match="total_amount"):
        provider.handle_callback(_notify(keys, uuid.uuid4().hex, total_amount=total_amount))


@pytest.mark.parametrize(
    "body",
    [b"", b"not a form", b"a=1&a=2", b"\xff\xfe=1", b"sign=" + b"x" * 70_000],
)
def test_malformed_notify_body_is_rejected(provider: AlipayProvider, body: bytes) -> None:
    with pytest.raises(InvalidWebhookError):
        provider.handle_callback(WebhookRequest(headers=NOTIFY_HEADERS, body=body))


def test_wait_buyer_pay_is_ignored(keys: AlipayKeys, provider: AlipayProvider) -> None:
    [event] = provider.handle_callback(
        _notify(keys, uuid.uuid4().hex, trade_status="WAIT_BUYER_PAY")
    )

    assert event.kind is EventKind.IGNORED


def test_trade_closed_is_payment_failed(keys: AlipayKeys, provider: AlipayProvider) -> None:
    request = _checkout()

    [event] = provider.handle_callback(
        _notify(keys, request.order_ref, trade_status="TRADE_CLOSED")
    )

    assert event.kind is EventKind.PAYMENT_FAILED
    assert event.order_id == request.order_id


@pytest.mark.parametrize("trade_status", ["TRADE_SUCCESS", "TRADE_CLOSED"])
def test_a_full_refund_notify_is_refunded_not_paid_or_failed(
    keys: AlipayKeys, provider: AlipayProvider, trade_status: str
) -> None:
    webhook = _notify(
        keys,
        uuid.uuid4().hex,
        trade_status=trade_status,
        extra={"refund_fee": "99.00", "gmt_refund": "2026-11-26 18:00:00.123"},
    )

    [event] = provider.handle_callback(webhook)

    assert event.kind is EventKind.REFUNDED
    assert event.amount == 9900
    assert event.type == f"refund:{trade_status}"


def test_a_partial_refund_notify_is_recorded_but_ignored(
    keys: AlipayKeys, provider: AlipayProvider
) -> None:
    webhook = _notify(
        keys,
        uuid.uuid4().hex,
        extra={"refund_fee": "10.00", "gmt_refund": "2026-11-26 18:00:00.123"},
    )

    [event] = provider.handle_callback(webhook)

    assert event.kind is EventKind.IGNORED
    assert event.type == "refund:TRADE_SUCCESS"


def test_notify_subject_in_chinese_verifies(keys: AlipayKeys, provider: AlipayProvider) -> None:
    webhook = _notify(keys, uuid.uuid4().hex, extra={"subject": "VibeBox 专业版 (yearly)"})

    [event] = provider.handle_callback(webhook)

    assert event.payload["subject"] == "VibeBox 专业版 (yearly)"


def test_ack_is_exactly_success_and_nack_is_not(provider: AlipayProvider) -> None:
    ack, nack = provider.ack(), provider.nack("bad signature")

    assert (ack.status, ack.body, ack.content_type) == (200, "success", "text/plain")
    assert nack.status == 400
    assert nack.body == "failure"
    assert nack.content_type == "text/plain"


# --- reconciliation and cancellation -------------------------------------------------------


def test_query_of_a_trade_nobody_scanned_is_unknown(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout()
    provider.create_order(request)

    assert provider.query_order(_order_ref(request)).state is OrderState.UNKNOWN


def test_query_of_a_scanned_unpaid_trade_is_pending(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout()
    provider.create_order(request)
    double.scan(request.order_ref)

    answer = provider.query_order(_order_ref(request))

    assert answer.state is OrderState.PENDING
    assert answer.event is None


def test_query_of_a_paid_trade_is_paid_with_a_stable_synthetic_event(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout(amount=2990)
    provider.create_order(request)
    double.pay(request.order_ref)
    trade = double.trade(request.order_ref)
    assert trade is not None

    first = provider.query_order(_order_ref(request))
    second = provider.query_order(_order_ref(request))

    assert first.state is OrderState.PAID
    assert first.event is not None
    assert second.event is not None
    assert first.event.event_id == f"query:{request.order_ref}:{trade.trade_no}"
    assert second.event.event_id == first.event.event_id
    assert first.event.kind is EventKind.PAID
    assert first.event.order_id == request.order_id
    assert first.event.amount == 2990
    assert first.event.currency == "CNY"


def test_query_of_a_closed_trade_is_failed(provider: AlipayProvider, double: AlipayDouble) -> None:
    request = _checkout()
    provider.create_order(request)
    double.close(request.order_ref)

    assert provider.query_order(_order_ref(request)).state is OrderState.FAILED


def test_query_business_error_other_than_not_exist_is_permanent(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    double.business_error_next("alipay.trade.query", "40006", "isv.insufficient-isv-permissions")

    with pytest.raises(PermanentError, match="insufficient"):
        provider.query_order(_order_ref(_checkout()))


def test_cancel_closes_a_scanned_unpaid_trade(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout()
    provider.create_order(request)
    double.scan(request.order_ref)

    provider.cancel_order(_order_ref(request))

    trade = double.trade(request.order_ref)
    assert trade is not None
    assert trade.status == "TRADE_CLOSED"
    assert provider.query_order(_order_ref(request)).state is OrderState.FAILED


def test_cancel_of_a_trade_alipay_does_not_know_is_a_no_op(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    provider.cancel_order(_order_ref(_checkout()))

    assert double.calls("alipay.trade.close") == 1


def test_cancel_of_a_paid_trade_is_a_permanent_error(
    provider: AlipayProvider, double: AlipayDouble
) -> None:
    request = _checkout()
    provider.create_order(request)
    double.pay(request.order_ref)

    with pytest.raises(PermanentError, match=re.escape("ACQ.TRADE_STATUS_ERROR")):
        provider.cancel_order(_order_ref(request))


def test_cancel_subscription_is_a_no_op(provider: AlipayProvider, double: AlipayDouble) -> None:
    provider.cancel_subscription("anything", at_period_end=True)

    assert double.requests() == []


# --- configuration -----------------------------------------------------------------------


def test_from_env_names_every_missing_variable() -> None:
    with pytest.raises(ProviderNotConfiguredError) as caught:
        AlipayProvider.from_env({})

    message = str(caught.value)
    for name in ("ALIPAY_APP_ID", "ALIPAY_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY"):
        assert name in message


def test_from_env_names_only_what_is_missing(keys: AlipayKeys, double: AlipayDouble) -> None:
    with pytest.raises(ProviderNotConfiguredError) as caught:
        AlipayProvider.from_env(_env(keys, double, ALIPAY_PUBLIC_KEY=""))

    message = str(caught.value)
    assert "ALIPAY_PUBLIC_KEY" in message
    assert "ALIPAY_APP_ID" not in message
    assert "ALIPAY_PRIVATE_KEY" not in message


def test_from_env_reads_key_files_and_defaults(
    keys: AlipayKeys, double: AlipayDouble, tmp_path: pytest.TempPathFactory
) -> None:
    private_file = tmp_path / "app_private.pem"  # type: ignore[operator]
    public_file = tmp_path / "alipay_public.pem"  # type: ignore[operator]
    private_file.write_text(keys.app_private)
    public_file.write_text(keys.alipay_public)
    env = {
        "ALIPAY_APP_ID": DEFAULT_APP_ID,
        "ALIPAY_PRIVATE_KEY_FILE": str(private_file),
        "ALIPAY_PUBLIC_KEY_FILE": str(public_file),
    }

    provider = AlipayProvider.from_env(env)

    assert provider.mode == "precreate"
    assert provider.seller_id is None
    assert provider._client.gateway == "https://openapi.alipay.com/gateway.do"


def test_from_env_accepts_keys_as_the_alipay_console_shows_them(
    keys: AlipayKeys, double: AlipayDouble
) -> None:
    env = _env(
        keys,
        double,
        ALIPAY_PRIVATE_KEY=bare_base64(keys.app_private),
        ALIPAY_PUBLIC_KEY=bare_base64(keys.alipay_public),
    )
    provider = AlipayProvider.from_env(env)

    assert provider.create_order(_checkout()).qr_code_url


def test_from_env_accepts_pem_with_escaped_newlines(keys: AlipayKeys, double: AlipayDouble) -> None:
    escaped = keys.app_private.strip().replace("\n", "\\n")

    provider = AlipayProvider.from_env(_env(keys, double, ALIPAY_PRIVATE_KEY=escaped))

    assert provider.create_order(_checkout()).qr_code_url


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ALIPAY_MODE": "wap"}, "ALIPAY_MODE"),
        ({"ALIPAY_GATEWAY": "openapi.alipay.com"}, "ALIPAY_GATEWAY"),
        ({"ALIPAY_PRIVATE_KEY": "not a key"}, "ALIPAY_PRIVATE_KEY is not an RSA private key"),
        (
            {"ALIPAY_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
            "ALIPAY_PUBLIC_KEY",
        ),
        (
            {"ALIPAY_PRIVATE_KEY_FILE": "/nonexistent/key.pem", "ALIPAY_PRIVATE_KEY": ""},
            "ALIPAY_PRIVATE_KEY_FILE",
        ),
    ],
)
def test_from_env_rejects_invalid_settings(
    keys: AlipayKeys, double: AlipayDouble, overrides: dict[str, str], expected: str
) -> None:
    env = _env(keys, double)
    env.update(overrides)
    env = {k: v for k, v in env.items() if v}

    with pytest.raises(ProviderNotConfiguredError, match=expected):
        AlipayProvider.from_env(env)


def test_from_env_rejects_swapped_keys_without_echoing_them(
    keys: AlipayKeys, double: AlipayDouble
) -> None:
    with pytest.raises(ProviderNotConfiguredError) as caught:
        AlipayProvider.from_env(
            _env(
                keys,
                double,
                ALIPAY_PRIVATE_KEY=keys.alipay_public,
                ALIPAY_PUBLIC_KEY=keys.app_private,
            )
        )

    assert "ALIPAY_PRIVATE_KEY is not an RSA private key" in str(caught.value)
    assert bare_base64(keys.alipay_public)[:40] not in str(caught.value)


def test_from_env_rejects_the_app_public_key_in_place_of_alipays(
    keys: AlipayKeys, double: AlipayDouble
) -> None:
    with pytest.raises(ProviderNotConfiguredError, match="app's own public key"):
        AlipayProvider.from_env(_env(keys, double, ALIPAY_PUBLIC_KEY=keys.app_public))


def test_keys_never_reach_logs_or_errors(
    keys: AlipayKeys, double: AlipayDouble, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = AlipayProvider.from_env(_env(keys, double))
    errors: list[str] = [repr(provider)]
    provider.create_order(_checkout())
    double.fail_next(1, status=503)
    with pytest.raises(TransientError) as transient:
        provider.create_order(_checkout())
    errors.append(str(transient.value))
    double.set_faults(bad_response_sign=True)
    with pytest.raises(PermanentError) as permanent:
        provider.create_order(_checkout())
    errors.append(str(permanent.value))

    seen = caplog.text + "\n".join(errors)
    for pem in (keys.app_private, keys.alipay_public):
        body = bare_base64(pem)
        assert body[10:50] not in seen
        assert body[-50:-10] not in seen
