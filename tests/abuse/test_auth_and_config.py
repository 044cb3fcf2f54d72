"""Reproducers of the "Hardening" issue for accounts and configuration, against the real app,
PostgreSQL and Redis. Each failed on the code before the fix:

- production started with the repository's public development secrets (a JWT signed with the
  dev key then read /api/admin/users);
- an unknown user's login ran bcrypt at cost 4 while real hashes use BCRYPT_ROUNDS;
- a 72-character password of more than 72 bytes at login was a 500 (bcrypt's ValueError);
- ``12345678``, ``password``, ``password123`` or the username as password were accepted;
- NUL characters and unpaired surrogates in username/password were 500s;
- login had only per-IP limits: a guesser spreading attempts over addresses was never slowed.
"""

from __future__ import annotations

import base64
import os
import secrets
import time

import bcrypt
import pytest

from app.config import DEV_ENCRYPTION_KEY, DEV_SECRET, ConfigError, Settings

STRONG_PASSWORD = "violet-Harbor-tangent-42"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def register(client, username: str, password: str = STRONG_PASSWORD, email: str | None = None):
    return client.post(
        "/api/auth/register",
        json={
            "email": email or f"{username}@example.com",
            "username": username,
            "password": password,
        },
    )


def login(client, username: str, password: str, ip: str | None = None):
    extra = {"environ_overrides": {"REMOTE_ADDR": ip}} if ip else {}
    return client.post(
        "/api/auth/login", json={"username": username, "password": password}, **extra
    )


# --- production secrets ---------------------------------------------------------------------


@pytest.fixture
def production(monkeypatch):
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "ENCRYPTION_KEY", "PAYMENT_PROVIDERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIBEBOX_ENV", "production")
    return monkeypatch


def test_production_refuses_to_start_with_the_repository_dev_secrets(production):
    from app import create_app

    production.setenv("SECRET_KEY", DEV_SECRET)
    production.setenv("JWT_SECRET_KEY", DEV_SECRET + "-jwt")  # the dev JWT key
    production.setenv("ENCRYPTION_KEY", DEV_ENCRYPTION_KEY)
    with pytest.raises(ConfigError) as info:
        create_app()
    message = str(info.value)
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "ENCRYPTION_KEY"):
        assert f"{name} is a publicly known value" in message
    # ...and says how to make good ones.
    assert 'python -c "import secrets; print(secrets.token_urlsafe(48))"' in message
    assert (
        'python -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())"' in message
    )
    assert DEV_SECRET not in message  # the refusal never repeats a secret


@pytest.mark.parametrize(
    "variable", ["SECRET_KEY", "JWT_SECRET_KEY", "ENCRYPTION_KEY"], ids=str.lower
)
def test_production_refuses_each_dev_secret_alone(production, variable):
    good = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    dev = {
        "SECRET_KEY": DEV_SECRET,
        "JWT_SECRET_KEY": DEV_SECRET + "-jwt",
        "ENCRYPTION_KEY": DEV_ENCRYPTION_KEY,
    }
    for name, value in good.items():
        production.setenv(name, value)
    assert Settings.from_env().is_production  # strong values start
    production.setenv(variable, dev[variable])
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env()


# --- login cost -----------------------------------------------------------------------------


@pytest.fixture
def bcrypt_checks(monkeypatch):
    """Every bcrypt.checkpw call (the real one runs), as the cost encoded in the hash."""
    costs: list[int] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        costs.append(int(hashed.split(b"$")[2]))
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    return costs


@pytest.fixture
def configure(app, monkeypatch):
    """Run the app with these environment variables (read by Settings.from_env, as at
    start-up); undone after the test."""

    def apply(**env: str) -> Settings:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env()
        monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", settings)
        return settings

    return apply


@pytest.fixture
def cost_5(configure):
    """BCRYPT_ROUNDS=5: the suite runs at 4, the cost the old dummy hash had."""
    return configure(BCRYPT_ROUNDS="5")


def test_unknown_user_costs_one_bcrypt_check_at_the_configured_cost(client, cost_5, bcrypt_checks):
    assert register(client, "mallory-target").status_code == 201
    bcrypt_checks.clear()

    assert_error(login(client, "mallory-target", "wrong-password-1"), 401, "invalid_credentials")
    known = list(bcrypt_checks)
    bcrypt_checks.clear()
    assert_error(login(client, "no-such-user", "wrong-password-1"), 401, "invalid_credentials")
    unknown = list(bcrypt_checks)

    assert known == [5]  # the real hash, at BCRYPT_ROUNDS
    assert unknown == known  # the same work when the account does not exist


# --- passwords of more than 72 bytes at login --------------------------------------------------


@pytest.mark.parametrize("password", ["é" * 72, "😀" * 72, "x" * 73], ids=["e", "emoji", "ascii"])
def test_long_multibyte_password_at_login_is_401_not_500(client, bcrypt_checks, password):
    assert register(client, "multibyte").status_code == 201
    bcrypt_checks.clear()
    assert_error(login(client, "multibyte", password), 401, "invalid_credentials")
    assert_error(login(client, "nobody-multibyte", password), 401, "invalid_credentials")
    # Both still cost one bcrypt check at the configured cost.
    assert bcrypt_checks == [4, 4]


# --- password policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "email", "password", "says"),
    [
        ("weak1", None, "12345678", "at least 12 characters"),
        ("weak2", None, "password", "at least 12 characters"),
        ("weak3", None, "password123", "at least 12 characters"),
        ("weak4", None, "password1234", "Too common"),
        ("weak5", None, "aaaaaaaaaaaaaaaa", "Too common"),
        ("weak6", None, "qwertyuiop123", "Too common"),
        ("margaret.hamilton", None, "margaret.hamilton", "username or email"),
        ("grace", "grace.hopper@example.com", "grace.hopper@example.com", "username or email"),
        ("weak7", None, "é" * 40, "72 bytes"),
    ],
)
def test_weak_passwords_are_refused_at_registration(client, username, email, password, says):
    body = assert_error(register(client, username, password, email), 422, "validation_error")
    assert list(body["errors"]) == ["password"]
    assert any(says in message for message in body["errors"]["password"]), body


def test_a_strong_password_is_accepted(client):
    assert register(client, "strong-one", "correct horse battery staple").status_code == 201


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/api/auth/login", "username", "ada\x00"),
        ("/api/auth/login", "username", "ada\ud800"),
        ("/api/auth/login", "password", "long-enough-pass\x00"),
        ("/api/auth/login", "password", "long-enough-pass\udfff"),
        ("/api/auth/register", "username", "ada\x00b"),
        ("/api/auth/register", "email", "ada\ud800@example.com"),
        ("/api/auth/register", "password", "violet-Harbor\x00tangent-42"),
        ("/api/auth/register", "password", "violet-Harbor\ud83dtangent-42"),
    ],
)
def test_nul_and_lone_surrogates_are_422(client, path, field, value):
    body = {"username": "ada-lovelace", "password": STRONG_PASSWORD}
    if path.endswith("register"):
        body["email"] = "ada@example.com"
    body[field] = value
    errors = assert_error(client.post(path, json=body), 422, "validation_error")["errors"]
    assert field in errors


# --- per-account throttling -------------------------------------------------------------------


@pytest.fixture
def throttle(configure):
    """Per-account throttling: 5 free failures, then 2 s, 4 s, 8 s. Long enough that the
    next request lands inside the delay even on a loaded machine; short to wait out."""
    return configure(
        LOGIN_FREE_FAILURES="5", LOGIN_DELAY_BASE_SECONDS="2", LOGIN_DELAY_MAX_SECONDS="8"
    )


def test_failures_from_many_addresses_throttle_the_account_even_for_the_right_password(
    client, throttle, bcrypt_checks
):
    assert register(client, "throttled").status_code == 201
    for i in range(6):  # six addresses, each far below the per-IP limit
        assert_error(
            login(client, "throttled", f"guess-{i}", ip=f"192.0.2.{i + 1}"),
            401,
            "invalid_credentials",
        )

    bcrypt_checks.clear()
    refused = login(client, "throttled", STRONG_PASSWORD, ip="192.0.2.99")
    body = assert_error(refused, 429, "login_throttled")
    # The body has the account's delay; Retry-After is never earlier (flask-limiter raises it
    # to the per-IP window's reset when that is later).
    retry_after = body["retryAfter"]
    assert retry_after >= 1
    assert int(refused.headers["Retry-After"]) >= retry_after
    assert bcrypt_checks == []  # refused before any password is looked at

    time.sleep(retry_after)  # wait as told
    assert login(client, "throttled", STRONG_PASSWORD, ip="192.0.2.100").status_code == 200

    # The success reset the count: the free failures are back.
    for i in range(6):
        assert_error(
            login(client, "throttled", f"again-{i}", ip=f"198.51.100.{i + 1}"),
            401,
            "invalid_credentials",
        )
    assert_error(
        login(client, "throttled", STRONG_PASSWORD, ip="198.51.100.99"), 429, "login_throttled"
    )


def test_unknown_accounts_are_throttled_the_same_way(client, throttle):
    for i in range(6):
        assert_error(
            login(client, "ghost", f"guess-{i}", ip=f"203.0.113.{i + 1}"),
            401,
            "invalid_credentials",
        )
    assert_error(login(client, "ghost", "guess-7", ip="203.0.113.99"), 429, "login_throttled")
