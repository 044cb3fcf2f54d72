"""Plans, checkout, payment webhooks, subscriptions."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from html import escape
from typing import Any, cast

from flask import Blueprint as FlaskBlueprint
from flask import Response, current_app, redirect, request
from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint
from werkzeug.wrappers import Response as WerkzeugResponse

from app import get_settings
from app.api.openapi import WEBHOOK_DOC
from app.api.subscriptions.schemas import (
    CheckoutRequestSchema,
    CheckoutResponseSchema,
    PlanListSchema,
    SubscriptionListSchema,
)
from app.db import db_session
from app.errors import AmountMismatchError, ConflictError, NotFoundError, UnknownOrderError
from app.extensions import limiter
from app.integrations.payments.base import (
    InvalidWebhookError,
    PaymentProvider,
    WebhookRequest,
    with_query,
)
from app.integrations.payments.dev_provider import DevProvider
from app.integrations.payments.registry import ProviderRegistry
from app.services import billing

log = logging.getLogger(__name__)

blp = Blueprint(
    "subscriptions", __name__, url_prefix="/api/subscriptions", description="Plans and payments"
)
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def payment_registry() -> ProviderRegistry:
    registry: ProviderRegistry = current_app.extensions["vibebox.payments"]
    return registry


def _provider(name: str) -> PaymentProvider:
    provider = payment_registry().get(name)
    if provider is None:
        reason = payment_registry().disabled.get(name)
        raise ConflictError(
            f"Payments with {name} are not available"
            + (" (the provider is not configured)" if reason else ""),
            code="payment_provider_unavailable",
        )
    return provider


@blp.route("/plans")
class Plans(MethodView):
    @blp.etag
    @blp.response(200, PlanListSchema)
    def get(self):
        """The active plans with prices (minor units), resources, regions and box limit"""
        return {"plans": billing.describe_plans(db_session(), get_settings())}


@blp.route("/checkout")
class Checkout(MethodView):
    decorators = [jwt_required()]

    @blp.arguments(CheckoutRequestSchema)
    @blp.response(201, CheckoutResponseSchema)
    @blp.alt_response(
        409,
        description="`payment_provider_unavailable`, `plan_not_available`, `quota_exceeded` "
        "(the user's live-box limit: `limit`, `liveBoxes`, `pendingCheckouts`), "
        "`region_mismatch` (the plan's subscription runs elsewhere)",
    )
    @blp.alt_response(
        422, description="`region_unavailable`: not offered for the plan (`offeredRegions`)"
    )
    @blp.alt_response(502, description="The provider failed")
    @blp.doc(security=SECURITY)
    def post(self, data: dict[str, Any]):
        """Start paying for a plan: an order plus the provider's checkout URL or QR code"""
        provider = _provider(data["provider"])
        settings = get_settings()
        order, checkout = billing.start_checkout(
            db_session(),
            user=current_user,
            plan_id=data["planId"],
            billing_cycle=data["billingCycle"],
            provider=provider,
            notify_url=f"{settings.public_base_url}/api/subscriptions/webhook/{provider.name}",
            return_url=settings.checkout_return_url,
            region=data.get("region"),
            policy=billing.CheckoutPolicy.from_settings(settings),
        )
        db_session.commit()
        return {
            "orderId": order.id,
            "checkoutUrl": checkout.checkout_url,
            "qrCodeUrl": checkout.qr_code_url,
            "amount": order.amount,
            "currency": order.currency,
            "region": order.region,
        }


def handle_webhook(provider: PaymentProvider, webhook: WebhookRequest) -> Response:
    """Verify, record, commit, answer: the event's effect (order paid, subscription, box)
    runs in the task ``billing.apply_payment_event``, published once the record is
    committed (``billing.intake_event``). No remote calls beyond what verification needs,
    so the provider gets its answer fast."""

    try:
        events = provider.handle_callback(webhook)
    except InvalidWebhookError as exc:
        log.warning("%s webhook rejected: %s", provider.name, exc.reason)
        return _reply(provider.nack("invalid notification"))
    session = db_session()
    for event in events:
        try:
            billing.intake_event(session, event)
        except AmountMismatchError:
            session.commit()  # keep the flag and the event: operators must see it
            return _reply(provider.nack("amount mismatch"))
        except UnknownOrderError:
            session.rollback()
            log.warning("%s event %s names no known order", provider.name, event.event_id)
            return _reply(provider.nack("unknown order"))
    session.commit()
    return _reply(provider.ack())


def _reply(reply: Any) -> Response:
    return Response(reply.body, status=reply.status, content_type=reply.content_type)


@blp.route("/webhook/<string:provider_name>")
class Webhook(MethodView):
    # Authenticated by signature, and providers burst: not subject to the per-IP limit.
    decorators = [limiter.exempt]

    @blp.response(200)
    @blp.alt_response(409, description="`payment_provider_unavailable`: provider not enabled")
    @blp.doc(**WEBHOOK_DOC)
    def post(self, provider_name: str):
        """Payment provider callback (Stripe, WeChat Pay, Alipay, dev)"""
        provider = _provider(provider_name)
        headers = cast(Mapping[str, str], request.headers)  # case-insensitive lookups
        return handle_webhook(provider, WebhookRequest(headers=headers, body=request.get_data()))


@blp.route("")
class MySubscriptions(MethodView):
    decorators = [jwt_required()]

    @blp.response(200, SubscriptionListSchema)
    @blp.doc(security=SECURITY)
    def get(self):
        """My subscriptions"""
        return {"subscriptions": billing.list_subscriptions(db_session(), current_user.id)}


def _dev_provider(order_id: uuid.UUID) -> DevProvider:
    provider = payment_registry().get("dev")
    if not isinstance(provider, DevProvider):
        raise NotFoundError("Not found")
    if request.args.get("sig") != provider.sign(str(order_id)):
        raise NotFoundError("Not found")
    return provider


# The dev checkout page is HTML for a browser, not part of the API: a plain Flask blueprint,
# so it is not in the OpenAPI document (flask-smorest has no "hidden" operations).
dev_checkout_bp = FlaskBlueprint("dev_checkout", __name__, url_prefix="/api/subscriptions")


def _dev_return_url(order_id: uuid.UUID) -> str:
    """Where the browser goes after a dev payment: CHECKOUT_RETURN_URL with the query Stripe
    adds to its success URL (``checkout=success``), and the order id to poll."""
    return with_query(get_settings().checkout_return_url, f"checkout=success&orderId={order_id}")


@dev_checkout_bp.get("/dev/checkout/<uuid:order_id>")
def dev_checkout_page(order_id: uuid.UUID) -> Response:
    """Development checkout page (dev provider only)"""
    _dev_provider(order_id)
    order = billing.get_order(db_session(), order_id)
    title = (
        f"{order.amount / 100:.2f} {escape(order.currency)} for "
        f"{escape(order.plan_id)} ({escape(order.billing_cycle)})"
    )
    head = "<!doctype html><title>VibeBox dev checkout</title>"
    if order.status == "paid":
        page = (
            f"{head}<h1>Already paid: {title}</h1>"
            "<p>This order is paid; there is nothing more to pay.</p>"
            f'<p><a href="{escape(_dev_return_url(order_id))}">Continue</a></p>'
        )
    elif order.status != "pending":
        page = f"{head}<h1>{title}</h1><p>This order is {escape(order.status)}.</p>"
    else:
        page = (
            f"{head}<h1>Pay {title}</h1>"
            "<p>Development payments: no money moves.</p>"
            f'<form method="post" action="{escape(request.full_path)}">'
            '<button type="submit">Pay</button></form>'
        )
    return Response(page, content_type="text/html; charset=utf-8")


@dev_checkout_bp.post("/dev/checkout/<uuid:order_id>")
def dev_checkout_pay(order_id: uuid.UUID) -> Response | WerkzeugResponse:
    """Complete a dev checkout through the webhook code path, then send the browser to the
    return URL (303). An order that is already paid is not paid again (the webhook's event
    record would make it a no-op anyway): straight to the return URL."""
    provider = _dev_provider(order_id)
    order = billing.get_order(db_session(), order_id)
    if order.status != "paid":
        db_session.remove()  # the webhook path reads the order in its own transaction
        reply = handle_webhook(
            provider, WebhookRequest(headers={}, body=provider.completion_body(str(order_id)))
        )
        if reply.status_code != 200:
            return reply
    return redirect(_dev_return_url(order_id), code=303)
