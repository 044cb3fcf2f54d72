from __future__ import annotations

import pytest
from sqlalchemy import select

from app.errors import AuthenticationError, ConflictError
from app.models import User
from app.services import accounts


def test_default_bcrypt_cost_is_12(session):
    user = accounts.register_user(
        session, email="Cost@Example.com", username="Cost12", password="long-enough-1"
    )
    assert user.password_hash.startswith("$2b$12$")
    assert user.email == "cost@example.com"
    assert user.username == "cost12"


def test_authenticate_by_username_or_email(session):
    accounts.register_user(
        session, email="k@example.com", username="kay", password="pw-12345678", bcrypt_rounds=4
    )
    assert accounts.authenticate(session, login="KAY", password="pw-12345678").username == "kay"
    assert accounts.authenticate(session, login="k@example.com", password="pw-12345678")
    with pytest.raises(AuthenticationError):
        accounts.authenticate(session, login="kay", password="pw-1234567")


def test_duplicate_registration_leaves_the_session_usable(session):
    accounts.register_user(
        session, email="d@example.com", username="dup", password="pw-12345678", bcrypt_rounds=4
    )
    with pytest.raises(ConflictError) as info:
        accounts.register_user(
            session, email="d@example.com", username="dup2", password="pw-12345678", bcrypt_rounds=4
        )
    assert info.value.code == "email_taken"
    # The failed insert rolled back only its savepoint.
    assert session.scalar(select(User).where(User.username == "dup")) is not None


def test_create_admin_command_creates_then_promotes(app, db, session, monkeypatch):
    runner = app.test_cli_runner()
    monkeypatch.setenv("ADMIN_PW", "admin-password-1")
    result = runner.invoke(
        args=[
            "user",
            "create-admin",
            "--email",
            "root@example.com",
            "--username",
            "root",
            "--password-env",
            "ADMIN_PW",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    assert "admin-password-1" not in result.output
    admin = session.scalars(select(User).where(User.username == "root")).one()
    assert admin.is_admin

    accounts.register_user(
        session, email="p@example.com", username="plain", password="pw-12345678", bcrypt_rounds=4
    )
    result = runner.invoke(
        args=[
            "user",
            "create-admin",
            "--email",
            "p@example.com",
            "--username",
            "plain",
            "--password-env",
            "ADMIN_PW",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "promoted" in result.output
    session.expire_all()
    assert session.scalars(select(User).where(User.username == "plain")).one().is_admin


def test_create_admin_rejects_weak_password(app, db, monkeypatch):
    monkeypatch.setenv("ADMIN_PW", "short")
    result = app.test_cli_runner().invoke(
        args=[
            "user",
            "create-admin",
            "--email",
            "r@example.com",
            "--username",
            "root2",
            "--password-env",
            "ADMIN_PW",
        ]
    )
    assert result.exit_code != 0
    assert "password" in result.output
