from __future__ import annotations

from marshmallow import Schema, fields, validate


class ProgressSchema(Schema):
    done = fields.Integer(required=True)
    total = fields.Integer(required=True)


class TimelineEntrySchema(Schema):
    name = fields.String(required=True)
    state = fields.String(required=True)
    attempts = fields.Integer(required=True)
    startedAt = fields.DateTime(allow_none=True)
    finishedAt = fields.DateTime(allow_none=True)
    lastError = fields.String(allow_none=True)


class ConnectionInfoSchema(Schema):
    happyWebUrl = fields.String(required=True)
    sshCommand = fields.String(required=True)


class VibeBoxSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True)
    step = fields.String(allow_none=True, metadata={"description": "Current or next step"})
    progress = fields.Nested(ProgressSchema, required=True)
    attempts = fields.Integer(required=True)
    lastError = fields.String(allow_none=True)
    nextRetryAt = fields.DateTime(allow_none=True)
    planId = fields.String(required=True)
    createdAt = fields.DateTime(required=True)
    updatedAt = fields.DateTime(required=True)
    timeline = fields.List(fields.Nested(TimelineEntrySchema), required=True)
    degraded = fields.Boolean(
        required=True, metadata={"description": "The box's server fails health checks"}
    )
    degradedSince = fields.DateTime(allow_none=True)
    connectionInfo = fields.Nested(ConnectionInfoSchema, allow_none=True)


class VibeBoxEnvelopeSchema(Schema):
    vibeBox = fields.Nested(VibeBoxSchema, required=True)


class VibeBoxListSchema(Schema):
    vibeBoxes = fields.List(fields.Nested(VibeBoxSchema), required=True)


class ConnectResponseSchema(Schema):
    happyWebUrl = fields.String(required=True)


class ProvisionRequestSchema(Schema):
    userId = fields.UUID(required=True)
    planId = fields.String(required=True, validate=validate.Length(min=1, max=32))


class ControlRequestSchema(Schema):
    action = fields.String(required=True, validate=validate.OneOf(("start", "stop", "restart")))


class ControlResponseSchema(Schema):
    status = fields.String(required=True)
    vibeBox = fields.Nested(VibeBoxSchema, required=True)
