"""Contract of the ``python-alipay-sdk`` internals the Alipay provider relies on.

The provider (``app/integrations/payments/alipay/``) goes beyond the SDK's public
surface in four places; each test here pins one of them on the installed SDK, so an SDK
upgrade that changes it fails here, by name, rather than somewhere in a payment flow
(docs/payments.md, Alipay):

1. it hands the SDK a plain ``alipay.loggers`` module (the real one runs
   ``logging.config.dictConfig`` at import time, which closes the process's handlers);
2. it overrides ``verified_sync_response(data, response_type)``, the hook every
   ``api_alipay_trade_*`` server call ends in, to make the HTTP call itself;
3. it overrides ``build_body`` (called by every API method) to stamp Beijing time;
4. it calls the private ``_verify_and_return_sync_response(raw, response_type)``: RSA2 over
   the exact text of the ``<method>_response`` value cut out of the raw body, returning that
   value parsed, and raising ``AliPayValidationError`` when the signature does not verify
   (unsigned and ``error_response`` answers never reach it: the provider handles those).

No network: the SDK is driven directly, with keys and signatures made independently of it
(``tests/support/payments/alipay_double.py``, ``cryptography``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayValidationError

import app.integrations.payments.alipay  # noqa: F401  (installs the logger stand-in)
from tests.support.payments.alipay_double import AlipayKeys, make_keys, rsa2_sign

RESPONSE_TYPE = "alipay_trade_query_response"


@pytest.fixture(scope="module")
def keys() -> AlipayKeys:
    return make_keys()


@pytest.fixture(scope="module")
def sdk(keys: AlipayKeys) -> AliPay:
    return AliPay(
        appid="2021000000000001",
        app_private_key_string=keys.app_private,
        alipay_public_key_string=keys.alipay_public,
        sign_type="RSA2",
    )


def _signed_body(content: str, private_key: str, *, before: str = "", after: str = "") -> str:
    """A gateway answer as Alipay lays it out: the response value's exact text, then sign."""
    sign = rsa2_sign(content, private_key)
    return f'{{{before}"{RESPONSE_TYPE}":{content},{after}"sign":"{sign}"}}'


# --- 1. alipay.loggers ---------------------------------------------------------------------


def test_the_sdk_logs_through_the_alipay_loggers_module_we_replace() -> None:
    """In a fresh interpreter with a handler installed, importing the provider (and with it
    the SDK) leaves that handler open and gives the SDK our plain logger."""
    script = textwrap.dedent(
        """
        import logging, sys
        handler = logging.StreamHandler(sys.stdout)
        logging.getLogger().addHandler(handler)
        import app.integrations.payments.alipay
        import alipay
        sdk_logger = sys.modules["alipay.loggers"].logger
        assert alipay.logger is sdk_logger, "the SDK no longer takes its logger from .loggers"
        assert sdk_logger.name == "python-alipay-sdk"
        assert sdk_logger.handlers == [], sdk_logger.handlers
        assert logging.getLogger().handlers == [handler], logging.getLogger().handlers
        assert handler.stream is sys.stdout and not sys.stdout.closed
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# --- 2 and 3. the hooks the API methods call -------------------------------------------------


class _Recording(AliPay):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built: list[tuple[str, Any]] = []
        self.sent: list[tuple[dict[str, Any], str]] = []

    def build_body(self, method: str, biz_content: Any = None, **kwargs: Any) -> Any:
        self.built.append((method, biz_content))
        data = super().build_body(method, biz_content, **kwargs)
        data["timestamp"] = "2000-01-02 03:04:05"
        return data

    def verified_sync_response(self, data: dict[str, Any], response_type: str) -> Any:
        self.sent.append((dict(data), response_type))
        return {"code": "10000", "recorded": True}


@pytest.fixture
def recording(keys: AlipayKeys) -> _Recording:
    return _Recording(
        appid="2021000000000001",
        app_private_key_string=keys.app_private,
        alipay_public_key_string=keys.alipay_public,
        sign_type="RSA2",
    )


@pytest.mark.parametrize(
    ("call", "method"),
    [
        (
            lambda c: c.api_alipay_trade_precreate(
                subject="s", out_trade_no="o1", total_amount="1.00", notify_url="https://n/"
            ),
            "alipay.trade.precreate",
        ),
        (lambda c: c.api_alipay_trade_query(out_trade_no="o1"), "alipay.trade.query"),
        (lambda c: c.api_alipay_trade_close(out_trade_no="o1"), "alipay.trade.close"),
    ],
)
def test_server_calls_go_through_build_body_and_verified_sync_response(
    recording: _Recording, call: Any, method: str
) -> None:
    answer = call(recording)
    assert answer == {"code": "10000", "recorded": True}  # our hook's result, unchanged
    assert [m for m, _ in recording.built] == [method]
    [(data, response_type)] = recording.sent
    assert response_type == method.replace(".", "_") + "_response"
    assert data["method"] == method
    assert data["timestamp"] == "2000-01-02 03:04:05"  # our build_body's stamp is what is sent
    assert data["biz_content"]["out_trade_no"] == "o1"


def test_page_pay_builds_a_signed_query_through_build_body_without_a_server_call(
    recording: _Recording,
) -> None:
    query = recording.api_alipay_trade_page_pay(
        subject="s",
        out_trade_no="o2",
        total_amount="1.00",
        return_url="https://r/",
        notify_url="https://n/",
    )
    assert [m for m, _ in recording.built] == ["alipay.trade.page.pay"]
    assert recording.sent == []
    assert "method=alipay.trade.page.pay" in query
    assert "timestamp=2000-01-02+03%3A04%3A05" in query
    assert "&sign=" in query


# --- 4. _verify_and_return_sync_response ----------------------------------------------------


def test_a_signed_answer_returns_the_response_value_parsed(sdk: AliPay, keys: AlipayKeys) -> None:
    # Keys out of order and spaces kept: the signature is over the raw text, not a re-dump.
    content = '{"out_trade_no":"o1", "code":"10000","msg":"Success","total_amount":"99.00"}'
    body = _signed_body(content, keys.alipay_private)
    assert sdk._verify_and_return_sync_response(body, RESPONSE_TYPE) == json.loads(content)


def test_the_signed_text_is_cut_out_by_brace_matching(sdk: AliPay, keys: AlipayKeys) -> None:
    """Nested objects inside the value, and other members before it, do not move the cut."""
    content = '{"code":"10000","fund_bill_list":[{"amount":"1.00"},{"amount":"2.00"}]}'
    body = _signed_body(
        content, keys.alipay_private, before='"alipay_cert_sn":"x",', after='"extra":{"a":1},'
    )
    assert sdk._verify_and_return_sync_response(body, RESPONSE_TYPE) == json.loads(content)


def test_a_signature_by_another_key_raises_validation_error(sdk: AliPay) -> None:
    body = _signed_body('{"code":"10000"}', make_keys().alipay_private)
    with pytest.raises(AliPayValidationError):
        sdk._verify_and_return_sync_response(body, RESPONSE_TYPE)


def test_a_changed_value_no_longer_verifies(sdk: AliPay, keys: AlipayKeys) -> None:
    body = _signed_body('{"code":"10000","total_amount":"99.00"}', keys.alipay_private)
    with pytest.raises(AliPayValidationError):
        sdk._verify_and_return_sync_response(body.replace("99.00", "0.01"), RESPONSE_TYPE)
