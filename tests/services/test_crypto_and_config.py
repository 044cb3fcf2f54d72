from __future__ import annotations

import base64
import logging
import os
import re
import secrets
from pathlib import Path

import pytest

from app import crypto
from app.config import (
    DEV_ENCRYPTION_KEY,
    DEV_JWT_SECRET,
    DEV_SECRET,
    ConfigError,
    Settings,
    encryption_key_problem,
    known_public_values,
    normalize_database_url,
    secret_problem,
    served_base_url,
)
from app.logging import RedactingFilter, redact

KEY = os.urandom(32)


def test_aes_gcm_round_trip_and_tamper_detection():
    sealed = crypto.encrypt_str(KEY, "hunter2", aad="server:1")
    assert b"hunter2" not in sealed
    assert crypto.decrypt_str(KEY, sealed, aad="server:1") == "hunter2"
    # Fresh nonce each time: equal plaintexts do not give equal ciphertexts.
    assert crypto.encrypt_str(KEY, "hunter2") != crypto.encrypt_str(KEY, "hunter2")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_str(KEY, sealed, aad="server:2")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_str(os.urandom(32), sealed, aad="server:1")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_str(KEY, tampered, aad="server:1")


@pytest.fixture
def prod_env(monkeypatch):
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "ENCRYPTION_KEY", "PAYMENT_PROVIDERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VIBEBOX_ENV", "production")
    return monkeypatch


def test_production_refuses_missing_secrets(prod_env):
    with pytest.raises(ConfigError, match="SECRET_KEY, JWT_SECRET_KEY, ENCRYPTION_KEY"):
        Settings.from_env()


def test_production_with_secrets_and_bad_encryption_key(prod_env):
    prod_env.setenv("SECRET_KEY", secrets.token_urlsafe(48))
    prod_env.setenv("JWT_SECRET_KEY", secrets.token_urlsafe(48))
    prod_env.setenv("ENCRYPTION_KEY", base64.b64encode(b"too short").decode())
    with pytest.raises(ConfigError, match="32 bytes"):
        Settings.from_env()
    prod_env.setenv("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    settings = Settings.from_env()
    assert settings.is_production
    assert settings.jwt_cookie_secure is True
    assert settings.bcrypt_rounds == 12 or os.environ.get("BCRYPT_ROUNDS")


def test_dev_payments_are_refused_in_production(prod_env):
    prod_env.setenv("SECRET_KEY", secrets.token_urlsafe(48))
    prod_env.setenv("JWT_SECRET_KEY", secrets.token_urlsafe(48))
    prod_env.setenv("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    prod_env.setenv("PAYMENT_PROVIDERS", "stripe,dev")
    with pytest.raises(ConfigError, match="dev payment provider"):
        Settings.from_env()
    prod_env.setenv("PAYMENT_PROVIDERS", "stripe,paypal")
    with pytest.raises(ConfigError, match="paypal"):
        Settings.from_env()


ROOT = Path(__file__).resolve().parents[2]
# A fixed random-looking value: parameter ids must be the same in every xdist worker.
GOOD_SECRET = "Qm9Xr2Lk8VtB1nZ4pW7sD3fH6jY0aC5eUo-Ti_gE"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (DEV_SECRET, "publicly known"),
        (DEV_JWT_SECRET, "publicly known"),
        ("a", "too short"),
        ("x" * 31, "too short"),
        ("a" * 64, "entropy"),
        ("ab" * 32, "entropy"),
        ("abcd" * 16, "entropy"),
        ("abcdefghijklmnopqrstuvwxyz012345", "guessable"),
        ("abcdefghijkl" * 4, "guessable"),
        ("correcthorsebatterystaple" * 2, "guessable"),
        ("change-me-" + GOOD_SECRET, "placeholder"),
        ("INSECURE" + GOOD_SECRET, "placeholder"),
    ],
)
def test_weak_or_known_secrets_are_refused(value, reason):
    problem = secret_problem("JWT_SECRET_KEY", value)
    assert problem is not None and reason in problem
    assert problem.startswith("JWT_SECRET_KEY ")
    assert "secrets.token_urlsafe(48)" in problem
    if len(value) > 3:
        assert value not in problem  # the refusal never repeats the value


@pytest.mark.parametrize(
    "make",
    [
        lambda: secrets.token_urlsafe(48),
        lambda: secrets.token_urlsafe(24),
        lambda: secrets.token_hex(16),
        lambda: secrets.token_hex(32),
        lambda: base64.b64encode(os.urandom(48)).decode(),
    ],
    ids=["urlsafe48", "urlsafe24", "hex16", "hex32", "base64"],
)
def test_random_secrets_are_accepted(make):
    for _ in range(50):
        assert secret_problem("SECRET_KEY", make()) is None


def test_every_value_in_env_example_is_refused_as_a_secret():
    values = [
        line.partition("=")[2].strip()
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z][A-Z0-9_]*=", line)
    ]
    values = [v for v in values if v]
    assert "https://app.happy.engineering" in values
    assert set(values) <= known_public_values()
    for value in values:
        assert "publicly known" in (secret_problem("SECRET_KEY", value) or "")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (bytes(32), "one byte repeated"),
        (b"\xff" * 32, "one byte repeated"),
        (bytes(range(8)) * 4, "degenerate"),
        (base64.b64decode(DEV_ENCRYPTION_KEY), "publicly known"),
    ],
)
def test_degenerate_or_known_encryption_keys_are_refused(key, reason):
    problem = encryption_key_problem(base64.b64encode(key).decode(), key)
    assert problem is not None and reason in problem
    assert "os.urandom(32)" in problem
    assert encryption_key_problem(base64.b64encode(KEY).decode(), KEY) is None


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ENCRYPTION_KEY": base64.b64encode(os.urandom(16)).decode()}, "exactly 32 bytes"),
        ({"ENCRYPTION_KEY": base64.b64encode(bytes(32)).decode()}, "ENCRYPTION_KEY is one byte"),
        ({"ENCRYPTION_KEY": "not base64!"}, "ENCRYPTION_KEY must be standard base64"),
        ({"SECRET_KEY": "a"}, "SECRET_KEY is too short"),
        ({"SECRET_KEY": "a" * 40}, "SECRET_KEY has too little entropy"),
        ({"JWT_SECRET_KEY": GOOD_SECRET, "SECRET_KEY": GOOD_SECRET}, "must differ"),
    ],
)
def test_production_start_up_refuses_weak_values(prod_env, env, match):
    good = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    for name, value in {**good, **env}.items():
        prod_env.setenv(name, value)
    with pytest.raises(ConfigError, match=match):
        Settings.from_env()


def test_weak_values_are_fine_outside_production(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "a")
    monkeypatch.setenv("ENCRYPTION_KEY", base64.b64encode(bytes(32)).decode())
    assert Settings.from_env().secret_key == "a"


def test_login_throttle_settings_from_env(monkeypatch):
    monkeypatch.setenv("LOGIN_FREE_FAILURES", "2")
    monkeypatch.setenv("LOGIN_DELAY_BASE_SECONDS", "0.05")
    monkeypatch.setenv("LOGIN_DELAY_MAX_SECONDS", "0.4")
    monkeypatch.setenv("LOGIN_FAILURE_RESET_SECONDS", "10")
    settings = Settings.from_env()
    assert settings.login_free_failures == 2
    assert settings.login_delay_base_seconds == 0.05
    assert settings.login_delay_max_seconds == 0.4
    assert settings.login_failure_reset_seconds == 10
    monkeypatch.setenv("LOGIN_DELAY_BASE_SECONDS", "0")
    with pytest.raises(ConfigError, match="LOGIN_DELAY_BASE_SECONDS"):
        Settings.from_env()
    monkeypatch.setenv("LOGIN_DELAY_BASE_SECONDS", "0.1")
    monkeypatch.setenv("LOGIN_FAILURE_RESET_SECONDS", "0.2")
    with pytest.raises(ConfigError, match="LOGIN_FAILURE_RESET_SECONDS"):
        Settings.from_env()


def test_defaults(monkeypatch):
    monkeypatch.delenv("BCRYPT_ROUNDS", raising=False)
    monkeypatch.delenv("JWT_ACCESS_TOKEN_EXPIRES_SECONDS", raising=False)
    settings = Settings.from_env()
    assert settings.bcrypt_rounds == 12
    assert settings.jwt_access_expires.days == 7
    assert settings.ratelimit_default == "100 per minute"
    assert settings.login_free_failures == 5
    assert settings.login_delay_base_seconds == 1.0
    assert settings.login_delay_max_seconds == 900.0


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", "5000", "http://127.0.0.1:5000"),
        ("0.0.0.0", "8080", "http://127.0.0.1:8080"),
        ("::", "8080", "http://127.0.0.1:8080"),
        ("", "", "http://127.0.0.1:5000"),
        (None, None, "http://127.0.0.1:5000"),
        ("::1", "7000", "http://[::1]:7000"),
        ("[::1]", "7000", "http://[::1]:7000"),
        ("api.example.test", "443", "http://api.example.test:443"),
    ],
)
def test_served_base_url_shows_the_address_served(host, port, url):
    assert served_base_url(host, port) == url


def test_public_base_url_defaults_to_the_address_served(monkeypatch):
    monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
    monkeypatch.delenv("CHECKOUT_RETURN_URL", raising=False)
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "5123")
    settings = Settings.from_env()
    assert settings.public_base_url == "http://127.0.0.1:5123"
    assert settings.checkout_return_url == "http://127.0.0.1:5123/"
    monkeypatch.setenv("PUBLIC_BASE_URL", "")  # empty, as in .env.example: still derived
    assert Settings.from_env().public_base_url == "http://127.0.0.1:5123"
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://vibebox.example/")
    settings = Settings.from_env()
    assert settings.public_base_url == "https://vibebox.example"
    assert settings.checkout_return_url == "https://vibebox.example/"


def test_env_example_sets_no_public_base_url_and_no_environment():
    values = dict(
        line.split("=", 1)
        for line in (Path(__file__).parents[2] / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert values["PUBLIC_BASE_URL"] == ""  # derived from HOST/PORT, never a fixed port
    assert values["VIBEBOX_ENV"] == ""  # development for make run, production in compose


def test_missing_database_url_names_the_fix(monkeypatch):
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigError, match="make run"):
        Settings.from_env()


def test_database_url_gets_the_psycopg3_driver():
    assert normalize_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_redaction_filter_scrubs_secrets_from_log_records():
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        'body {"password": "pw1", "token": "t0k3nval"} auth=Bearer abc.def url?secret=s3&x=1',
        None,
        None,
    )
    RedactingFilter().filter(record)
    message = record.getMessage()
    for secret in ("pw1", "t0k3nval", "abc.def", "s3&"):
        assert secret not in message
    assert "x=1" in message
    assert redact("nothing to hide") == "nothing to hide"
