from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.api.auth.schemas import UserSchema
from app.api.validation import INT32_MAX, RequestSchema


class PageArgsSchema(RequestSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=INT32_MAX))


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    total = fields.Integer(required=True)
