from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

from app.api.validation import RequestSchema

USERNAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$"


class UserSchema(Schema):
    id = fields.UUID(dump_only=True)
    email = fields.Email(dump_only=True)
    username = fields.String(dump_only=True)
    isAdmin = fields.Boolean(attribute="is_admin", dump_only=True)
    createdAt = fields.DateTime(attribute="created_at", dump_only=True)


class SessionTokenSchema(Schema):
    token = fields.String(required=True)
    expiresAt = fields.DateTime(required=True)


class AuthResponseSchema(Schema):
    user = fields.Nested(UserSchema, required=True)
    session = fields.Nested(SessionTokenSchema, required=True)


class RegisterRequestSchema(RequestSchema):
    email = fields.Email(required=True, validate=validate.Length(max=254))
    username = fields.String(
        required=True,
        validate=validate.Regexp(
            USERNAME_RE,
            error="3-32 characters: letters, digits, '_', '.', '-'; starting with a letter "
            "or digit",
        ),
    )
    password = fields.String(required=True, load_only=True)

    @validates("password")
    def _password(self, value: str, **_: object) -> None:
        if len(value) < 8:
            raise ValidationError("Must be at least 8 characters long.")
        # bcrypt only reads 72 bytes; refuse rather than silently ignore the rest.
        if len(value.encode()) > 72:
            raise ValidationError("Must be at most 72 bytes long.")


class LoginRequestSchema(RequestSchema):
    username = fields.String(
        required=True,
        validate=validate.Length(min=1, max=254),
        metadata={"description": "Username or email"},
    )
    password = fields.String(required=True, load_only=True, validate=validate.Length(max=72))

    @validates("password")
    def _password(self, value: str, **_: object) -> None:
        # bcrypt refuses more than 72 bytes (ValueError): no stored password is longer.
        if len(value.encode()) > 72:
            raise ValidationError("Must be at most 72 bytes long.")


class SessionResponseSchema(Schema):
    user = fields.Nested(UserSchema, allow_none=True, required=True)


class LogoutResponseSchema(Schema):
    success = fields.Boolean(required=True)
