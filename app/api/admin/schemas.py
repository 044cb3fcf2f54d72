from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, missing, post_dump, validate

from app.api.auth.schemas import UserSchema
from app.api.validation import INT32_MAX, RequestSchema
from app.api.vibeboxes.schemas import ProgressSchema, VibeBoxSchema
from app.services.boxes import status_document
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


class _ProgressOfBox(fields.Nested):
    """The box's ``progress`` (``status_document.progress``), documented as ProgressSchema."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(ProgressSchema, **kwargs)

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = missing) -> Any:
        return status_document.progress(obj)


class AdminBoxSummarySchema(Schema):
    """One row of the operator list (no timeline, no events): dumps a ``VibeBox`` whose
    steps are loaded."""

    id = fields.UUID(required=True)
    status = fields.String(required=True)
    step = fields.String(allow_none=True)
    progress = _ProgressOfBox(required=True)
    attempts = fields.Integer(required=True)
    lastError = fields.String(allow_none=True, attribute="last_error")
    degraded = fields.Boolean(required=True)
    degradedReason = fields.String(allow_none=True, attribute="degraded_reason")
    planId = fields.String(required=True, attribute="plan_id")
    region = fields.String(
        allow_none=True, metadata={"description": "where the box runs; null: regions are off"}
    )
    userId = fields.UUID(required=True, attribute="user_id")
    serverId = fields.UUID(allow_none=True, attribute="server_id")
    unixUser = fields.String(allow_none=True, attribute="unix_user")
    createdAt = fields.DateTime(required=True, attribute="created_at")
    updatedAt = fields.DateTime(required=True, attribute="updated_at")


class AdminBoxPageSchema(Schema):
    items = fields.List(fields.Nested(AdminBoxSummarySchema), required=True)
    total = fields.Integer(required=True)


class AdminBoxSchema(VibeBoxSchema):
    """The owner's document plus operator fields: dumps a ``status_document.BoxStatusView``.
    ``connectionInfo`` (the owner's credentials) is always null."""

    userId = fields.UUID(required=True, attribute="box.user_id")
    serverId = fields.UUID(allow_none=True, attribute="box.server_id")
    unixUser = fields.String(allow_none=True, attribute="box.unix_user")

    @post_dump
    def _never_the_owners_credentials(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["connectionInfo"] = None
        return data


class AdminBoxEnvelopeSchema(Schema):
    vibeBox = fields.Nested(AdminBoxSchema, required=True)
