from __future__ import annotations

import base64
import logging
import os

import pytest

from app import crypto
from app.config import ConfigError, Settings, normalize_database_url
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
    prod_env.setenv("SECRET_KEY", "s" * 32)
    prod_env.setenv("JWT_SECRET_KEY", "j" * 32)
    prod_env.setenv("ENCRYPTION_KEY", base64.b64encode(b"too short").decode())
    with pytest.raises(ConfigError, match="32 bytes"):
        Settings.from_env()
    prod_env.setenv("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    settings = Settings.from_env()
    assert settings.is_production
    assert settings.jwt_cookie_secure is True
    assert settings.bcrypt_rounds == 12 or os.environ.get("BCRYPT_ROUNDS")


def test_dev_payments_are_refused_in_production(prod_env):
    prod_env.setenv("SECRET_KEY", "s" * 32)
    prod_env.setenv("JWT_SECRET_KEY", "j" * 32)
    prod_env.setenv("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    prod_env.setenv("PAYMENT_PROVIDERS", "stripe,dev")
    with pytest.raises(ConfigError, match="dev payment provider"):
        Settings.from_env()
    prod_env.setenv("PAYMENT_PROVIDERS", "stripe,paypal")
    with pytest.raises(ConfigError, match="paypal"):
        Settings.from_env()


def test_defaults(monkeypatch):
    monkeypatch.delenv("BCRYPT_ROUNDS", raising=False)
    monkeypatch.delenv("JWT_ACCESS_TOKEN_EXPIRES_SECONDS", raising=False)
    settings = Settings.from_env()
    assert settings.bcrypt_rounds == 12
    assert settings.jwt_access_expires.days == 7
    assert settings.ratelimit_default == "100 per minute"


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
