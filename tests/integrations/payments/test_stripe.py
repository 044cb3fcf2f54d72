"""StripeProvider against the Stripe double: the real SDK over real HTTP, webhooks signed
with ``stripe.WebhookSignature`` exactly as Stripe signs them."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from app.errors import PermanentError, TransientError
from app.integrations.payments.base import (
    CheckoutRequest,
    EventKind,
    InvalidWebhookError,
    OrderQuery,
    OrderRef,
    OrderState,
    PaymentProvider,
    ProviderEvent,
    ProviderNotConfiguredError,
    WebhookRequest,
)
from app.integrations.payments.stripe import StripeProvider
from tests.support.payments.stripe_double import (
    Price,
    StripeDouble,
    checkout_async_payment_failed,
    checkout_async_payment_succeeded,
    checkout_session_completed,
    encode_event,
    invoice_object,
    invoice_paid,
    invoice_paid_for,
    invoice_payment_failed,
    make_event,
    sign_payload,
    signed_webhook,
    subscription_deleted,
    subscription_object,
    subscription_updated,
)

SECRET_KEY = "sk_test_51VibeBoxDoubleKeyAbCdEfGhIjKlMnOpQrStUv"
WEBHOOK_SECRET = "whsec_vibebox_test_0123456789abcdef"
PRICES = {"basic:monthly": "price_basic_monthly", "basic:yearly": "price_basic_yearly"}


@pytest.fixture(scope="module")
def stripe_double() -> Iterator[StripeDouble]:
    prices = [
        Price("price_basic_monthly", 999, "usd", "month"),
        Price("price_basic_yearly", 9990, "usd", "year"),
    ]
    with StripeDouble(prices, api_key=SECRET_KEY) as double:
        yield double


@pytest.fixture(autouse=True)
def _fresh_double(stripe_double: StripeDouble) -> Iterator[None]:
    stripe_double.reset()
    yield
    stripe_double.reset()


@pytest.fixture
def provider(stripe_double: StripeDouble) -> StripeProvider:
    # No SDK retries by default: a fault test sees exactly the faults it injected.
    return make_provider(stripe_double.url, max_network_retries=0)


def make_provider(api_base: str, **kwargs: Any) -> StripeProvider:
    return StripeProvider(SECRET_KEY, WEBHOOK_SECRET, PRICES, api_base=api_base, **kwargs)


def checkout_request(**overrides: Any) -> CheckoutRequest:
    values: dict[str, Any] = {
        "order_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "user_email": "ada@example.com",
        "plan_id": "basic",
        "plan_name": "Basic",
        "billing_cycle": "monthly",
        "amount": 999,
        "currency": "USD",
        "notify_url": "https://api.vibebox.test/api/subscriptions/webhook/stripe",
        "return_url": "https://app.vibebox.test/orders/return?from=checkout",
    }
    values.update(overrides)
    return CheckoutRequest(**values)


def order_ref(request: CheckoutRequest, session_id: str | None) -> OrderRef:
    return OrderRef(request.order_id, session_id, request.amount, request.currency)


def deliver(
    provider: StripeProvider,
    event: dict[str, Any],
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
) -> list[ProviderEvent]:
    body, headers = signed_webhook(event, secret, timestamp)
    return provider.handle_callback(WebhookRequest(headers=headers, body=body))


def deliver_one(provider: StripeProvider, event: dict[str, Any]) -> ProviderEvent:
    events = deliver(provider, event)
    assert len(events) == 1
    return events[0]


def paid_session(
    provider: StripeProvider, double: StripeDouble, **overrides: Any
) -> tuple[CheckoutRequest, dict[str, Any]]:
    """Check out through the provider, then pay at the double."""
    request = checkout_request(**overrides)
    created = provider.create_order(request)
    return request, double.complete_session(created.provider_order_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_provider_satisfies_the_payment_provider_protocol(provider: StripeProvider) -> None:
    typed: PaymentProvider = provider  # mypy checks the structure; this checks the name
    assert typed.name == "stripe"


# --- checkout ---------------------------------------------------------------------------


def test_create_order_creates_subscription_session_with_price_metadata_and_idempotency_key(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request = checkout_request(billing_cycle="yearly", amount=9990)

    session = provider.create_order(request)

    [sent] = stripe_double.requests("POST", "/v1/checkout/sessions")
    params = sent["params"]
    metadata = {"orderId": request.order_id, "userId": request.user_id, "planId": "basic"}
    assert params["mode"] == "subscription"
    assert params["line_items"] == [{"price": "price_basic_yearly", "quantity": "1"}]
    assert params["client_reference_id"] == request.order_id
    assert params["metadata"] == metadata
    assert params["subscription_data"] == {"metadata": metadata}
    assert params["customer_email"] == "ada@example.com"
    assert params["success_url"].startswith(request.return_url + "&")
    assert "session_id={CHECKOUT_SESSION_ID}" in params["success_url"]
    assert params["cancel_url"].startswith(request.return_url + "&")
    assert params["success_url"] != params["cancel_url"]
    assert sent["idempotency_key"] == f"checkout-{request.order_id}"

    stored = stripe_double.session(session.provider_order_id)
    assert session.provider_order_id.startswith("cs_test_")
    assert session.checkout_url == stored["url"]
    assert session.qr_code_url is None
    assert stored["amount_total"] == 9990
    assert stored["status"] == "open"


def test_create_order_twice_for_one_order_returns_the_same_session(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request = checkout_request()

    first = provider.create_order(request)
    second = provider.create_order(request)

    assert second == first
    assert len(stripe_double.sessions()) == 1
    keys = [r["idempotency_key"] for r in stripe_double.requests("POST", "/v1/checkout/sessions")]
    assert keys == [f"checkout-{request.order_id}"] * 2


def test_concurrent_checkouts_of_one_order_get_one_session(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request = checkout_request()

    with ThreadPoolExecutor(max_workers=5) as pool:
        sessions = list(pool.map(lambda _: provider.create_order(request), range(5)))

    assert len({s.provider_order_id for s in sessions}) == 1
    assert len(stripe_double.sessions()) == 1


def test_create_order_for_two_orders_creates_two_sessions(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    first = provider.create_order(checkout_request())
    second = provider.create_order(checkout_request())

    assert first.provider_order_id != second.provider_order_id
    assert len(stripe_double.sessions()) == 2


def test_create_order_without_a_price_for_plan_and_cycle_raises_permanent_error(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    with pytest.raises(PermanentError, match="no price for 'pro:monthly'"):
        provider.create_order(checkout_request(plan_id="pro"))

    assert stripe_double.requests() == []


def test_create_order_with_a_price_stripe_does_not_know_raises_permanent_error(
    stripe_double: StripeDouble,
) -> None:
    provider = StripeProvider(
        SECRET_KEY,
        WEBHOOK_SECRET,
        {"basic:monthly": "price_deleted"},
        api_base=stripe_double.url,
        max_network_retries=0,
    )

    with pytest.raises(PermanentError, match="No such price"):
        provider.create_order(checkout_request())


@pytest.mark.parametrize("status", [500, 503, 429, 409])
def test_create_order_when_stripe_answers_a_retryable_status_raises_transient_error(
    provider: StripeProvider, stripe_double: StripeDouble, status: int
) -> None:
    stripe_double.fail_next(1, status=status)

    with pytest.raises(TransientError, match=f"HTTP {status}"):
        provider.create_order(checkout_request())

    assert stripe_double.sessions() == []


def test_create_order_retries_a_500_with_the_same_idempotency_key(
    stripe_double: StripeDouble,
) -> None:
    provider = make_provider(stripe_double.url, max_network_retries=1)
    request = checkout_request()
    stripe_double.fail_next(1, status=500)

    session = provider.create_order(request)

    sent = stripe_double.requests("POST", "/v1/checkout/sessions")
    assert [r["status"] for r in sent] == [500, 200]
    assert {r["idempotency_key"] for r in sent} == {f"checkout-{request.order_id}"}
    assert [s["id"] for s in stripe_double.sessions()] == [session.provider_order_id]


def test_create_order_when_stripe_is_unreachable_raises_transient_error() -> None:
    provider = make_provider(f"http://127.0.0.1:{free_port()}", max_network_retries=0)

    with pytest.raises(TransientError, match="no answer"):
        provider.create_order(checkout_request())


def test_create_order_when_stripe_hangs_past_the_timeout_raises_transient_error(
    stripe_double: StripeDouble,
) -> None:
    provider = make_provider(stripe_double.url, max_network_retries=0, timeout=(1.0, 0.3))
    stripe_double.hang = 2.0

    started = time.monotonic()
    with pytest.raises(TransientError):
        provider.create_order(checkout_request())

    assert time.monotonic() - started < 1.5


def test_create_order_with_a_revoked_key_raises_permanent_error_without_the_key(
    stripe_double: StripeDouble,
) -> None:
    revoked = "sk_test_51RevokedKeyZZZZZZZZZZZZZZZZZZZZZZZZ"
    provider = StripeProvider(revoked, WEBHOOK_SECRET, PRICES, api_base=stripe_double.url)

    with pytest.raises(PermanentError, match="HTTP 401") as caught:
        provider.create_order(checkout_request())

    assert revoked not in str(caught.value)
    assert revoked not in caught.value.safe_message
    assert revoked not in repr(provider)
    assert WEBHOOK_SECRET not in repr(provider)


def test_create_order_when_the_stripe_price_disagrees_with_the_plan_refuses_and_expires(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    with pytest.raises(PermanentError, match="is 999 USD, the plan is 1500 USD"):
        provider.create_order(checkout_request(amount=1500))

    [session] = stripe_double.sessions()
    assert session["status"] == "expired"


# --- webhooks: verification --------------------------------------------------------------


def test_signed_checkout_session_completed_gives_one_paid_event(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request, session = paid_session(provider, stripe_double)
    event = checkout_session_completed(session, event_id="evt_checkout_1", created=1_800_000_000)

    [paid] = deliver(provider, event)

    assert paid.provider == "stripe"
    assert paid.event_id == "evt_checkout_1"
    assert paid.type == "checkout.session.completed"
    assert paid.kind is EventKind.PAID
    assert paid.order_id == request.order_id
    assert paid.provider_order_id == session["id"]
    assert paid.provider_subscription_id == session["subscription"]
    assert paid.provider_subscription_id is not None
    assert paid.provider_subscription_id.startswith("sub_")
    assert paid.provider_customer_id == session["customer"]
    assert paid.amount == 999
    assert paid.currency == "USD"
    assert paid.occurred_at == datetime.fromtimestamp(1_800_000_000, UTC)
    assert paid.period_end is None
    assert paid.payload["metadata"]["orderId"] == request.order_id
    assert paid.payload["payment_status"] == "paid"
    json.dumps(paid.payload)  # storable as JSON as is


def test_order_id_falls_back_to_client_reference_id(provider: StripeProvider) -> None:
    order_id = str(uuid.uuid4())
    session = {
        "id": "cs_test_ref",
        "object": "checkout.session",
        "status": "complete",
        "payment_status": "paid",
        "client_reference_id": order_id,
        "metadata": {},
        "amount_total": 999,
        "currency": "usd",
    }

    paid = deliver_one(provider, checkout_session_completed(session))

    assert paid.kind is EventKind.PAID
    assert paid.order_id == order_id


def test_signature_header_is_found_whatever_its_capitalization(provider: StripeProvider) -> None:
    event = checkout_session_completed(_session("paid"))
    body = encode_event(event)
    headers = {"stripe-signature": sign_payload(body, WEBHOOK_SECRET)}

    [paid] = provider.handle_callback(WebhookRequest(headers=headers, body=body))

    assert paid.event_id == event["id"]


def test_timestamp_inside_the_300_s_tolerance_is_accepted(provider: StripeProvider) -> None:
    event = checkout_session_completed(_session("paid"))

    [paid] = deliver(provider, event, timestamp=int(time.time()) - 280)

    assert paid.kind is EventKind.PAID


def _forged(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": sign_payload(body, "whsec_attacker")}


def _stale(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": sign_payload(body, WEBHOOK_SECRET, int(time.time()) - 301)}


def _no_v1(body: bytes) -> dict[str, str]:
    signed = sign_payload(body, WEBHOOK_SECRET)
    return {"Stripe-Signature": signed.replace("v1=", "v0=")}


def _garbage(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": "t=yesterday,v1=deadbeef"}


def _missing(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "make_headers",
    [_forged, _stale, _no_v1, _garbage, _missing],
    ids=["wrong-secret", "stale-timestamp", "no-v1-scheme", "garbage-header", "no-header"],
)
def test_unverifiable_webhook_raises_invalid_webhook_error(
    provider: StripeProvider, make_headers: Any
) -> None:
    body = encode_event(checkout_session_completed(_session("paid")))

    with pytest.raises(InvalidWebhookError) as caught:
        provider.handle_callback(WebhookRequest(headers=make_headers(body), body=body))

    assert WEBHOOK_SECRET not in caught.value.reason


def test_body_changed_after_signing_raises_invalid_webhook_error(
    provider: StripeProvider,
) -> None:
    body, headers = signed_webhook(checkout_session_completed(_session("paid")), WEBHOOK_SECRET)
    tampered = body.replace(b'"amount_total": 999', b'"amount_total": 1')
    assert tampered != body

    with pytest.raises(InvalidWebhookError, match="signature"):
        provider.handle_callback(WebhookRequest(headers=headers, body=tampered))


def test_provider_with_another_webhook_secret_rejects_the_webhook(
    stripe_double: StripeDouble,
) -> None:
    other = StripeProvider(SECRET_KEY, "whsec_other_endpoint", PRICES, api_base=stripe_double.url)

    with pytest.raises(InvalidWebhookError):
        deliver(other, checkout_session_completed(_session("paid")))


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'{"id": "evt_1"}', b""],
    ids=["not-json", "not-utf8", "json-list", "no-type-or-data", "empty"],
)
def test_malformed_body_even_when_signed_raises_invalid_webhook_error(
    provider: StripeProvider, body: bytes
) -> None:
    try:
        header = sign_payload(body, WEBHOOK_SECRET)
    except UnicodeDecodeError:  # Stripe never sends such a body; its signature cannot match
        header = f"t={int(time.time())},v1={'0' * 64}"

    with pytest.raises(InvalidWebhookError):
        provider.handle_callback(WebhookRequest(headers={"Stripe-Signature": header}, body=body))


# --- webhooks: the event mapping ------------------------------------------------------------


def _session(payment_status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "cs_test_mapping",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "payment_status": payment_status,
        "client_reference_id": "11111111-2222-3333-4444-555555555555",
        "metadata": {"orderId": "11111111-2222-3333-4444-555555555555", "planId": "basic"},
        "subscription": "sub_mapping",
        "customer": "cus_mapping",
        "amount_total": 999,
        "currency": "usd",
        **extra,
    }


def test_checkout_completed_with_no_payment_required_is_paid(provider: StripeProvider) -> None:
    event = deliver_one(provider, checkout_session_completed(_session("no_payment_required")))

    assert event.kind is EventKind.PAID
    assert event.provider_order_id == "cs_test_mapping"


def test_checkout_completed_unpaid_is_ignored_until_the_async_payment_settles(
    provider: StripeProvider,
) -> None:
    event = deliver_one(provider, checkout_session_completed(_session("unpaid")))

    assert event.kind is EventKind.IGNORED
    assert event.order_id == "11111111-2222-3333-4444-555555555555"


def test_async_payment_succeeded_is_paid(provider: StripeProvider) -> None:
    event = deliver_one(provider, checkout_async_payment_succeeded(_session("unpaid")))

    assert event.kind is EventKind.PAID
    assert event.type == "checkout.session.async_payment_succeeded"
    assert event.order_id == "11111111-2222-3333-4444-555555555555"
    assert (event.amount, event.currency) == (999, "USD")
    assert event.provider_subscription_id == "sub_mapping"


def test_async_payment_failed_is_payment_failed(provider: StripeProvider) -> None:
    event = deliver_one(provider, checkout_async_payment_failed(_session("unpaid")))

    assert event.kind is EventKind.PAYMENT_FAILED
    assert event.order_id == "11111111-2222-3333-4444-555555555555"
    assert event.provider_order_id == "cs_test_mapping"


def test_first_invoice_paid_is_paid_for_the_order_in_the_subscription_metadata(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request, session = paid_session(provider, stripe_double)
    invoice = stripe_double.latest_invoice(session["subscription"])
    assert invoice["billing_reason"] == "subscription_create"

    event = deliver_one(provider, invoice_paid_for(invoice))

    assert event.kind is EventKind.PAID
    assert event.order_id == request.order_id
    assert event.provider_subscription_id == session["subscription"]
    assert event.provider_customer_id == session["customer"]
    assert (event.amount, event.currency) == (999, "USD")


def test_renewal_invoice_paid_is_renewed_with_the_new_period_end(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request, session = paid_session(provider, stripe_double)
    invoice = stripe_double.renew_subscription(session["subscription"])
    subscription = stripe_double.subscription(session["subscription"])
    new_end = subscription["items"]["data"][0]["current_period_end"]

    event = deliver_one(provider, invoice_paid_for(invoice, event_id="evt_renewal_1"))

    assert event.kind is EventKind.RENEWED
    assert event.event_id == "evt_renewal_1"
    assert event.order_id == request.order_id
    assert event.provider_subscription_id == session["subscription"]
    assert event.period_end == datetime.fromtimestamp(new_end, UTC)
    assert event.period_end != datetime.fromtimestamp(invoice["period_end"], UTC)
    assert (event.amount, event.currency) == (999, "USD")


def test_renewal_builder_sets_the_period_end_it_was_given(provider: StripeProvider) -> None:
    period_end = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)

    event = deliver_one(
        provider,
        invoice_paid("sub_builder", period_end=period_end, amount_paid=9990, currency="eur"),
    )

    assert event.kind is EventKind.RENEWED
    assert event.provider_subscription_id == "sub_builder"
    assert event.period_end == period_end
    assert (event.amount, event.currency) == (9990, "EUR")


def test_invoice_in_the_pre_2025_shape_is_understood(provider: StripeProvider) -> None:
    invoice = invoice_object("sub_legacy", amount=999, period_end=1_900_000_000)
    del invoice["parent"]
    invoice["subscription"] = "sub_legacy"
    invoice["subscription_details"] = {"metadata": {"orderId": "order-legacy"}}
    for line in invoice["lines"]["data"]:
        del line["parent"]
        line["type"] = "subscription"

    event = deliver_one(provider, make_event("invoice.paid", invoice))

    assert event.kind is EventKind.RENEWED
    assert event.provider_subscription_id == "sub_legacy"
    assert event.order_id == "order-legacy"
    assert event.period_end == datetime.fromtimestamp(1_900_000_000, UTC)


def test_invoice_paid_without_a_subscription_is_ignored(provider: StripeProvider) -> None:
    invoice = invoice_object("sub_x", billing_reason="manual", amount=500, period_end=1)
    invoice["parent"] = None
    invoice["lines"]["data"] = []

    event = deliver_one(provider, make_event("invoice.paid", invoice))

    assert event.kind is EventKind.IGNORED


def test_invoice_payment_failed_is_payment_failed_for_the_subscription(
    provider: StripeProvider,
) -> None:
    event = deliver_one(
        provider,
        invoice_payment_failed("sub_failing", amount_due=999, metadata={"orderId": "order-9"}),
    )

    assert event.kind is EventKind.PAYMENT_FAILED
    assert event.provider_subscription_id == "sub_failing"
    assert event.order_id == "order-9"
    assert event.period_end is None


def test_subscription_set_to_cancel_at_period_end_is_cancel_at_period_end(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request, session = paid_session(provider, stripe_double)
    subscription = stripe_double.subscription(session["subscription"])

    event = deliver_one(provider, subscription_updated(subscription, cancel_at_period_end=True))

    assert event.kind is EventKind.CANCEL_AT_PERIOD_END
    assert event.provider_subscription_id == subscription["id"]
    assert event.order_id == request.order_id
    assert event.payload["cancel_at_period_end"] is True


def test_other_subscription_updates_are_ignored(provider: StripeProvider) -> None:
    subscription = subscription_object("sub_plain", metadata={"orderId": "order-1"})

    event = deliver_one(provider, subscription_updated(subscription, cancel_at_period_end=False))

    assert event.kind is EventKind.IGNORED
    assert event.provider_subscription_id == "sub_plain"


def test_subscription_deleted_is_canceled(provider: StripeProvider) -> None:
    subscription = subscription_object("sub_gone", metadata={"orderId": "order-2"})

    event = deliver_one(provider, subscription_deleted(subscription, event_id="evt_gone"))

    assert event.kind is EventKind.CANCELED
    assert event.event_id == "evt_gone"
    assert event.provider_subscription_id == "sub_gone"
    assert event.order_id == "order-2"


@pytest.mark.parametrize(
    "event_type", ["charge.succeeded", "checkout.session.expired", "customer.created"]
)
def test_other_event_types_are_ignored(provider: StripeProvider, event_type: str) -> None:
    data = {"id": "ch_1", "object": "charge", "payment_method_details": {"card": {"last4": "4242"}}}

    event = deliver_one(provider, make_event(event_type, data, event_id="evt_other"))

    assert event.kind is EventKind.IGNORED
    assert event.event_id == "evt_other"
    assert "last4" not in json.dumps(event.payload)


def test_ack_and_nack_answer_what_stripe_expects(provider: StripeProvider) -> None:
    ack = provider.ack()
    nack = provider.nack("invalid signature")

    assert (ack.status, json.loads(ack.body), ack.content_type) == (
        200,
        {"received": True},
        "application/json",
    )
    assert (nack.status, json.loads(nack.body)) == (400, {"error": "invalid signature"})


# --- reconciliation -------------------------------------------------------------------------


def test_query_order_of_an_open_session_is_pending(provider: StripeProvider) -> None:
    request = checkout_request()
    session = provider.create_order(request)

    assert provider.query_order(order_ref(request, session.provider_order_id)) == OrderQuery(
        OrderState.PENDING
    )


def test_query_order_of_a_paid_session_is_paid_with_a_synthetic_event(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request, session = paid_session(provider, stripe_double)

    answer = provider.query_order(order_ref(request, session["id"]))

    assert answer.state is OrderState.PAID
    assert answer.event is not None
    event = answer.event
    assert event.event_id == f"query:{session['id']}"
    assert event.kind is EventKind.PAID
    assert event.order_id == request.order_id
    assert event.provider_order_id == session["id"]
    assert event.provider_subscription_id == session["subscription"]
    assert event.provider_customer_id == session["customer"]
    assert (event.amount, event.currency) == (999, "USD")
    assert event.payload["source"] == "query"


def test_query_order_of_a_complete_but_unpaid_session_is_pending(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request = checkout_request()
    created = provider.create_order(request)
    stripe_double.complete_session(created.provider_order_id, payment_status="unpaid")

    answer = provider.query_order(order_ref(request, created.provider_order_id))

    assert answer == OrderQuery(OrderState.PENDING)


def test_query_order_of_an_expired_session_is_failed(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request = checkout_request()
    created = provider.create_order(request)
    stripe_double.expire_session(created.provider_order_id)

    answer = provider.query_order(order_ref(request, created.provider_order_id))

    assert answer == OrderQuery(OrderState.FAILED)


@pytest.mark.parametrize("session_id", ["cs_test_never_created", None])
def test_query_order_stripe_does_not_know_is_unknown(
    provider: StripeProvider, session_id: str | None
) -> None:
    answer = provider.query_order(order_ref(checkout_request(), session_id))

    assert answer == OrderQuery(OrderState.UNKNOWN)


def test_query_order_when_stripe_fails_raises_transient_error(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    stripe_double.fail_next(1, status=502, path="/v1/checkout/sessions/")

    with pytest.raises(TransientError):
        provider.query_order(order_ref(checkout_request(), "cs_test_any"))


# --- cancellation ---------------------------------------------------------------------------


def test_cancel_order_expires_the_open_session(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request = checkout_request()
    created = provider.create_order(request)

    provider.cancel_order(order_ref(request, created.provider_order_id))

    assert stripe_double.session(created.provider_order_id)["status"] == "expired"


def test_cancel_order_of_a_paid_session_leaves_it_complete(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    request, session = paid_session(provider, stripe_double)

    provider.cancel_order(order_ref(request, session["id"]))

    assert stripe_double.session(session["id"])["status"] == "complete"


def test_cancel_order_twice_or_unknown_or_never_created_is_a_no_op(
    provider: StripeProvider,
) -> None:
    request = checkout_request()
    created = provider.create_order(request)

    provider.cancel_order(order_ref(request, created.provider_order_id))
    provider.cancel_order(order_ref(request, created.provider_order_id))
    provider.cancel_order(order_ref(request, "cs_test_never_created"))
    provider.cancel_order(order_ref(request, None))


def test_cancel_subscription_at_period_end_sets_cancel_at_period_end(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    _, session = paid_session(provider, stripe_double)

    provider.cancel_subscription(session["subscription"], at_period_end=True)

    subscription = stripe_double.subscription(session["subscription"])
    assert subscription["cancel_at_period_end"] is True
    assert subscription["status"] == "active"


def test_cancel_subscription_now_cancels_it_and_is_idempotent(
    provider: StripeProvider, stripe_double: StripeDouble
) -> None:
    _, session = paid_session(provider, stripe_double)

    provider.cancel_subscription(session["subscription"], at_period_end=False)
    provider.cancel_subscription(session["subscription"], at_period_end=False)
    provider.cancel_subscription(session["subscription"], at_period_end=True)

    assert stripe_double.subscription(session["subscription"])["status"] == "canceled"
    assert [r["status"] for r in stripe_double.requests("DELETE", "/v1/subscriptions/")] == [
        200,
        404,
    ]


def test_cancel_subscription_at_period_end_of_an_unknown_subscription_is_permanent(
    provider: StripeProvider,
) -> None:
    with pytest.raises(PermanentError, match="HTTP 404"):
        provider.cancel_subscription("sub_unknown", at_period_end=True)


# --- configuration --------------------------------------------------------------------------


def _env(**overrides: str) -> dict[str, str]:
    env = {
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_PRICE_IDS": json.dumps(PRICES),
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v != "<unset>"}


def test_from_env_builds_a_provider_that_talks_to_the_configured_base(
    stripe_double: StripeDouble,
) -> None:
    provider = StripeProvider.from_env(_env(STRIPE_API_BASE=stripe_double.url + "/"))

    session = provider.create_order(checkout_request())

    assert provider.api_base == stripe_double.url
    assert provider.price_ids == PRICES
    assert stripe_double.session(session.provider_order_id)["status"] == "open"


def test_from_env_without_api_base_uses_the_sdk_default() -> None:
    assert StripeProvider.from_env(_env()).api_base == "https://api.stripe.com"


def test_from_env_with_nothing_set_names_every_missing_variable() -> None:
    with pytest.raises(ProviderNotConfiguredError) as caught:
        StripeProvider.from_env({})

    message = str(caught.value)
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_PRICE_IDS"):
        assert name in message


@pytest.mark.parametrize(
    ("overrides", "named", "not_named"),
    [
        ({"STRIPE_SECRET_KEY": "<unset>"}, "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"),
        ({"STRIPE_WEBHOOK_SECRET": "  "}, "STRIPE_WEBHOOK_SECRET", "STRIPE_SECRET_KEY"),
        ({"STRIPE_PRICE_IDS": ""}, "STRIPE_PRICE_IDS", "STRIPE_SECRET_KEY"),
        ({"STRIPE_PRICE_IDS": "{basic:monthly"}, "STRIPE_PRICE_IDS", "STRIPE_SECRET_KEY"),
        ({"STRIPE_PRICE_IDS": '["price_1"]'}, "STRIPE_PRICE_IDS", "STRIPE_SECRET_KEY"),
        ({"STRIPE_PRICE_IDS": "{}"}, "STRIPE_PRICE_IDS", "STRIPE_SECRET_KEY"),
        ({"STRIPE_PRICE_IDS": '{"basic": "price_1"}'}, "STRIPE_PRICE_IDS", "STRIPE_SECRET_KEY"),
        ({"STRIPE_API_BASE": "api.stripe.com"}, "STRIPE_API_BASE", "STRIPE_SECRET_KEY"),
    ],
    ids=[
        "no-secret-key",
        "blank-webhook-secret",
        "empty-price-ids",
        "invalid-json",
        "json-not-object",
        "no-prices",
        "key-without-cycle",
        "base-without-scheme",
    ],
)
def test_from_env_with_a_bad_setting_is_not_configured_and_says_which(
    overrides: dict[str, str], named: str, not_named: str
) -> None:
    with pytest.raises(ProviderNotConfiguredError) as caught:
        StripeProvider.from_env(_env(**overrides))

    message = str(caught.value)
    assert named in message
    assert not_named not in message
    assert SECRET_KEY not in message
    assert WEBHOOK_SECRET not in message
