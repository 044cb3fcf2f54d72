from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.api.auth.schemas import UserSchema
from app.api.validation import INT32_MAX, RequestSchema
from app.api.vibeboxes.schemas import ProgressSchema, VibeBoxSchema
from app.services.boxes.statuses import BoxStatus


class PageArgsSchema(RequestSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=INT32_MAX))


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    total = fields.Integer(required=True)


class BoxListArgsSchema(PageArgsSchema):
    status = fields.String(validate=validate.OneOf([s.value for s in BoxStatus]))
    degraded = fields.Boolean()
    waiting = fields.Boolean(
        metadata={"description": "true: only boxes waiting_for_capacity; false: all others"}
    )
    userId = fields.UUID()
    serverId = fields.UUID()
    planId = fields.String(validate=validate.Length(min=1, max=32))
    region = fields.String(validate=validate.Length(min=1, max=32))


class AdminBoxSummarySchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
    step = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema, required=True)
    attempts = fields.Integer(required=True)
    lastError = fields.String(allow_none=True)
    degraded = fields.Boolean(required=True)
    degradedReason = fields.String(allow_none=True)
    planId = fields.String(required=True)
    region = fields.String(
        allow_none=True, metadata={"description": "where the box runs; null: regions are off"}
    )
    userId = fields.UUID(required=True)
    serverId = fields.UUID(allow_none=True)
    unixUser = fields.String(allow_none=True)
    createdAt = fields.DateTime(required=True)
    updatedAt = fields.DateTime(required=True)


class AdminBoxPageSchema(Schema):
    items = fields.List(fields.Nested(AdminBoxSummarySchema), required=True)
    total = fields.Integer(required=True)


class AdminBoxSchema(VibeBoxSchema):
    """The owner's document plus operator fields (``connectionInfo`` is always null)."""

    userId = fields.UUID(required=True)
    serverId = fields.UUID(allow_none=True)
    unixUser = fields.String(allow_none=True)


class AdminBoxEnvelopeSchema(Schema):
    vibeBox = fields.Nested(AdminBoxSchema, required=True)
