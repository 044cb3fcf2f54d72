from __future__ import annotations

from marshmallow import Schema, fields


class OrderSchema(Schema):
    """Dumps an ``Order`` (``app.models.Order``)."""

    id = fields.UUID(required=True)
    status = fields.String(required=True)
    planId = fields.String(required=True, attribute="plan_id")
    billingCycle = fields.String(required=True, attribute="billing_cycle")
    provider = fields.String(required=True)
    amount = fields.Integer(required=True)
    currency = fields.String(required=True)
    region = fields.String(allow_none=True, metadata={"description": "Region of the box bought"})
    createdAt = fields.DateTime(required=True, attribute="created_at")
    paidAt = fields.DateTime(allow_none=True, attribute="paid_at")
    subscriptionId = fields.UUID(allow_none=True, attribute="subscription_id")
    # null until the order's box is created (``Order.vibebox``, loaded when dumped)
    vibeBoxId = fields.UUID(allow_none=True, attribute="vibebox.id", dump_default=None)
