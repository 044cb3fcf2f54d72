from __future__ import annotations

from marshmallow import Schema, fields, validate

from app.api.auth.schemas import UserSchema


class PageArgsSchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    total = fields.Integer(required=True)
