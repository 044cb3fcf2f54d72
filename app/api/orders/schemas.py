from __future__ import annotations

from marshmallow import Schema, fields


class OrderSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
    planId = fields.String(required=True)
    billingCycle = fields.String(required=True)
    provider = fields.String(required=True)
    amount = fields.Integer(required=True)
    currency = fields.String(required=True)
    region = fields.String(allow_none=True, metadata={"description": "Region of the box bought"})
    createdAt = fields.DateTime(required=True)
    paidAt = fields.DateTime(allow_none=True)
    subscriptionId = fields.UUID(allow_none=True)
    vibeBoxId = fields.UUID(allow_none=True)
