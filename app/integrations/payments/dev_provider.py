"""The ``dev`` provider: checkout without a payment company, for development and tests.

Its checkout URL is a page on this API whose button POSTs a signed completion to
``/api/subscriptions/webhook/dev`` - the same webhook code path real providers use. The
signature is an HMAC of the order id with the app's secret key, so only URLs this API
handed out complete anything. It is refused in production (see ``app.config``;
docs/payments.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

from app.integrations.payments.base import (
    CheckoutRequest,
    CheckoutSession,
    EventKind,
    InvalidWebhookError,
    OrderQuery,
    OrderRef,
    OrderState,
    ProviderEvent,
    WebhookReply,
    WebhookRequest,
)


class DevProvider:
    name = "dev"

    def __init__(self, secret: str, public_base_url: str) -> None:
        self._secret = secret.encode()
        self.public_base_url = public_base_url.rstrip("/")

    def sign(self, order_id: str) -> str:
        return hmac.new(
            self._secret, f"dev-checkout:{order_id}".encode(), hashlib.sha256
        ).hexdigest()

    def checkout_url(self, order_id: str) -> str:
        base = f"{self.public_base_url}/api/subscriptions/dev/checkout/{order_id}"
        return f"{base}?sig={self.sign(order_id)}"

    def create_order(self, request: CheckoutRequest) -> CheckoutSession:
        return CheckoutSession(
            provider_order_id=f"dev_{request.order_ref}",
            checkout_url=self.checkout_url(request.order_id),
        )

    def completion_body(self, order_id: str) -> bytes:
        return json.dumps({"orderId": order_id, "signature": self.sign(order_id)}).encode()

    def handle_callback(self, request: WebhookRequest) -> list[ProviderEvent]:
        try:
            data = json.loads(request.body)
            order_id = str(uuid.UUID(str(data["orderId"])))
            signature = str(data["signature"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidWebhookError(f"malformed dev completion: {type(exc).__name__}") from None
        if not hmac.compare_digest(signature, self.sign(order_id)):
            raise InvalidWebhookError("bad dev completion signature")
        return [
            ProviderEvent(
                provider=self.name,
                event_id=f"dev:{order_id}",
                type="dev.checkout.completed",
                kind=EventKind.PAID,
                order_id=order_id,
                provider_order_id=f"dev_{order_id.replace('-', '')}",
                payload={"orderId": order_id},
                amount_required=False,  # the local checkout page pays exactly the order
            )
        ]

    def query_order(self, order: OrderRef) -> OrderQuery:
        return OrderQuery(state=OrderState.PENDING)  # only the user's click pays a dev order

    def cancel_order(self, order: OrderRef) -> None:
        return None

    def cancel_subscription(self, provider_subscription_id: str, *, at_period_end: bool) -> None:
        return None

    def ack(self) -> WebhookReply:
        return WebhookReply(200, json.dumps({"received": True}))

    def nack(self, message: str) -> WebhookReply:
        return WebhookReply(400, json.dumps({"error": message}))
