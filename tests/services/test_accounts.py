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


def test_dummy_hash_is_made_once_per_cost_and_has_that_cost():
    assert accounts.dummy_hash(5) is accounts.dummy_hash(5)
    assert accounts.dummy_hash(5).startswith(b"$2b$05$")
    assert accounts.dummy_hash(6).startswith(b"$2b$06$")


def test_verify_password_never_raises(session):
    good = accounts.hash_password("long-enough-1", rounds=4)
    assert accounts.verify_password("long-enough-1", good, rounds=4)
    for password in ("é" * 72, "a" * 1000, "nul\x00byte", "lone\ud800surrogate", ""):
        assert accounts.verify_password(password, good, rounds=4) is False
        assert accounts.verify_password(password, None, rounds=4) is False
    assert accounts.verify_password("long-enough-1", "not-a-bcrypt-hash", rounds=4) is False
    with pytest.raises(ValueError, match="72 bytes"):
        accounts.hash_password("é" * 40, rounds=4)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short-1", "at least 12"),
        ("password1234", "Too common"),
        ("Password123!", "Too common"),
        ("iloveyou1234", "Too common"),
        ("kay-the-user", "username or email"),
        ("KAY-THE-USER", "username or email"),
        ("kay@example.com", "username or email"),
        ("kay-the-user2024", "Too common"),
        ("ü" * 37, "72 bytes"),
    ],
)
def test_password_policy(password, problem):
    from app.services.password_policy import password_problems

    problems = password_problems(password, username="kay-the-user", email="kay@example.com")
    assert len(problems) == 1 and problem in problems[0]


def test_password_policy_accepts_strong_passwords():
    from app.services.password_policy import password_problems

    for password in ("correct horse battery", "violet-Harbor-tangent-42", "Zürich-Fondue-Abend-17"):
        assert password_problems(password, username="kay", email="kay@example.com") == [], password
