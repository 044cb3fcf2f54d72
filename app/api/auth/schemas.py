from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.api.validation import RequestSchema
from app.services.password_policy import password_problems

USERNAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$"
# A sanity bound on what a login form may send as a password; anything past 72 bytes is
# simply a wrong password (401), see app/services/accounts.py.
LOGIN_PASSWORD_MAX_CHARS = 1024


def plain_text(value: str) -> None:
    """Refuse NUL characters and unpaired surrogates: PostgreSQL cannot store the first, and
    the second is not Unicode text at all (it cannot be encoded to UTF-8)."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValidationError("Must be valid Unicode text (no unpaired surrogates).")


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
    email = fields.Email(required=True, validate=[validate.Length(max=254), plain_text])
    username = fields.String(
        required=True,
        validate=[
            plain_text,
            validate.Regexp(
                USERNAME_RE,
                error="3-32 characters: letters, digits, '_', '.', '-'; starting with a letter "
                "or digit",
            ),
        ],
    )
    password = fields.String(
        required=True,
        load_only=True,
        validate=plain_text,
        metadata={
            "description": "12+ characters, at most 72 bytes (UTF-8); not common, guessable, "
            "or your username/email"
        },
    )

    @validates_schema(skip_on_field_errors=False)
    def _password_policy(self, data: dict[str, Any], **_: object) -> None:
        # Runs even when another field is invalid, so every problem is reported at once;
        # ``data`` holds only the fields that passed their own checks.
        if "password" not in data:
            return
        problems = password_problems(
            data["password"], username=data.get("username"), email=data.get("email")
        )
        if problems:
            raise ValidationError({"password": problems})


class LoginRequestSchema(RequestSchema):
    username = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=254), plain_text],
        metadata={"description": "Username or email"},
    )
    password = fields.String(
        required=True,
        load_only=True,
        validate=[validate.Length(max=LOGIN_PASSWORD_MAX_CHARS), plain_text],
    )


class SessionResponseSchema(Schema):
    user = fields.Nested(UserSchema, allow_none=True, required=True)


class LogoutResponseSchema(Schema):
    success = fields.Boolean(required=True)
