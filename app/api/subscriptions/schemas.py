from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.api.validation import RequestSchema
from app.config import KNOWN_PROVIDERS
from app.models.plan import BILLING_CYCLES


class PlanSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String(required=True)
    currency = fields.String(required=True)
    priceMonthly = fields.Integer(attribute="price_monthly", required=True)
    priceYearly = fields.Integer(attribute="price_yearly", required=True)
    priceMonthlyCny = fields.Integer(attribute="price_monthly_cny", required=True)
    priceYearlyCny = fields.Integer(attribute="price_yearly_cny", required=True)
    cpuCores = fields.Integer(attribute="cpu_cores", required=True)
    ramGb = fields.Integer(attribute="ram_gb", required=True)
    diskGb = fields.Integer(attribute="disk_gb", required=True)
    claudeApiQuota = fields.Integer(attribute="claude_api_quota", required=True)
    features = fields.List(fields.String(), required=True)
    regions = fields.List(
        fields.String(),
        attribute="offered_regions",
        required=True,
        metadata={"description": "Regions the plan can be bought in ([]: regions not in use)"},
    )
    defaultRegion = fields.String(
        attribute="default_region",
        allow_none=True,
        required=True,
        metadata={"description": "Where a checkout without `region` goes"},
    )
    maxLiveBoxesPerUser = fields.Integer(
        attribute="max_live_boxes",
        required=True,
        metadata={"description": "Live boxes one user may have with this plan (0: no limit)"},
    )


class PlanListSchema(Schema):
    plans = fields.List(fields.Nested(PlanSchema), required=True)


class CheckoutRequestSchema(RequestSchema):
    planId = fields.String(required=True, validate=validate.Length(min=1, max=32))
    billingCycle = fields.String(required=True, validate=validate.OneOf(BILLING_CYCLES))
    provider = fields.String(required=True, validate=validate.OneOf(KNOWN_PROVIDERS))
    region = fields.String(
        validate=validate.Length(min=1, max=32),
        metadata={
            "description": "One of the plan's `regions`; default: its `defaultRegion` (an "
            "order that extends a subscription: where its box runs)"
        },
    )


class CheckoutResponseSchema(Schema):
    orderId = fields.UUID(required=True)
    checkoutUrl = fields.String(allow_none=True)
    qrCodeUrl = fields.String(allow_none=True)
    amount = fields.Integer(required=True)
    currency = fields.String(required=True)
    region = fields.String(allow_none=True, required=True)


class SubscriptionSchema(Schema):
    id = fields.UUID(required=True)
    planId = fields.String(attribute="plan_id", required=True)
    status = fields.String(required=True)
    billingCycle = fields.String(attribute="billing_cycle", required=True)
    provider = fields.String(attribute="payment_provider", required=True)
    currentPeriodStart = fields.DateTime(attribute="current_period_start", required=True)
    currentPeriodEnd = fields.DateTime(attribute="current_period_end", required=True)
    cancelAtPeriodEnd = fields.Boolean(attribute="cancel_at_period_end", required=True)
    canceledAt = fields.DateTime(attribute="canceled_at", allow_none=True)


class SubscriptionListSchema(Schema):
    subscriptions = fields.List(fields.Nested(SubscriptionSchema), required=True)


class CancelRequestSchema(RequestSchema):
    atPeriodEnd = fields.Boolean(load_default=True)
