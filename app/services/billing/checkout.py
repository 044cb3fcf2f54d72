"""Checkout: a pending order priced from its plan, and the provider's payment for it."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from app.errors import (
    ConflictError,
    PaymentProviderError,
    PermanentError,
    TransientError,
    ValidationError,
)
from app.integrations.payments.base import CheckoutRequest, CheckoutSession, PaymentProvider
from app.models import Order, Plan, User
from app.services.billing.quotas import CheckoutPolicy, check_quota, lock_user_quota, renewal_box
from app.services.pool import regions

log = logging.getLogger(__name__)


# WeChat Pay and Alipay charge CNY; Stripe and dev charge in the plan's own currency.
PROVIDER_CURRENCY = {"wechat": "CNY", "alipay": "CNY"}


def start_checkout(
    session: Session,
    *,
    user: User,
    plan_id: str,
    billing_cycle: str,
    provider: PaymentProvider,
    notify_url: str,
    return_url: str,
    region: str | None = None,
    policy: CheckoutPolicy | None = None,
) -> tuple[Order, CheckoutSession]:
    """Create a pending order (price from the plan) and the provider's payment for it.

    Before the provider hears of it: the region is resolved (422 ``region_unavailable``)
    and, unless the order extends a subscription that has its box, the user's box quota is
    checked (409 ``quota_exceeded``) under a per-user lock, so concurrent checkouts of one
    user are counted one after the other."""
    policy = policy or CheckoutPolicy()
    plan = session.get(Plan, plan_id)
    if plan is None or not plan.active:
        raise ValidationError(errors={"planId": ["Unknown plan."]})
    lock_user_quota(session, user.id)
    renewing = renewal_box(session, user.id, plan.id)
    if renewing is not None and region is None:
        order_region = renewing.region  # an extension: the box stays where it is
    else:
        order_region = regions.resolve_region(policy.regions, plan, region)
        if renewing is not None and order_region != renewing.region:
            raise ConflictError(
                f"Your {plan.name} subscription's box runs in region "
                f"{renewing.region or '(none)'}; a further order of that plan extends it "
                "there. Leave out region, or buy another plan.",
                code="region_mismatch",
                extra={"region": renewing.region},
            )
    if renewing is None:
        check_quota(session, user.id, plan, policy)
    currency = PROVIDER_CURRENCY.get(provider.name, plan.currency)
    amount = plan.price_for(billing_cycle, currency)
    if amount <= 0:
        raise ConflictError(
            f"The {plan.name} plan is not sold in {currency}", code="plan_not_available"
        )
    order = Order(
        id=uuid.uuid4(),
        user_id=user.id,
        plan_id=plan.id,
        billing_cycle=billing_cycle,
        provider=provider.name,
        amount=amount,
        currency=currency,
        status="pending",
        region=order_region,
    )
    session.add(order)
    session.flush()
    try:
        checkout = provider.create_order(
            CheckoutRequest(
                order_id=str(order.id),
                user_id=str(user.id),
                user_email=user.email,
                plan_id=plan.id,
                plan_name=plan.name,
                billing_cycle=billing_cycle,
                amount=amount,
                currency=currency,
                notify_url=notify_url,
                return_url=return_url,
            )
        )
    except TransientError as exc:
        log.warning("checkout at %s failed (transient): %s", provider.name, exc)
        raise PaymentProviderError(
            "The payment provider is not answering; try again shortly",
            code="payment_provider_unavailable",
        ) from None
    except PermanentError as exc:
        log.error("checkout at %s refused: %s", provider.name, exc)
        raise PaymentProviderError(
            "The payment provider refused the order", code="payment_provider_error"
        ) from None
    order.provider_order_id = checkout.provider_order_id
    log.info("order %s created at %s (%s %s)", order.id, provider.name, amount, currency)
    return order, checkout
