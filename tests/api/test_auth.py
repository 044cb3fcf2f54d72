"""Accounts through the HTTP API, against real PostgreSQL and Redis."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from app.models import User
from tests.factories import TEST_PASSWORD, UserFactory


def register(client, **overrides):
    body = {"email": "ada@example.com", "username": "ada", "password": "s3cret-pass!"}
    body.update(overrides)
    return client.post("/api/auth/register", json=body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_register_login_session_logout_then_old_token_is_refused(client):
    created = register(client)
    assert created.status_code == 201
    body = created.get_json()
    assert body["user"]["username"] == "ada"
    assert body["user"]["email"] == "ada@example.com"
    assert "password" not in body["user"]

    login = client.post("/api/auth/login", json={"username": "ada", "password": "s3cret-pass!"})
    assert login.status_code == 200
    token = login.get_json()["session"]["token"]

    session = client.get("/api/auth/session", headers=bearer(token))
    assert session.status_code == 200
    assert session.get_json()["user"]["username"] == "ada"

    out = client.post("/api/auth/logout", headers=bearer(token))
    assert out.status_code == 200
    assert out.get_json() == {"success": True}

    again = client.get("/api/auth/session", headers=bearer(token))
    assert_error(again, 401, "token_revoked")
    # A token issued at registration is a different session and still works.
    other = client.get("/api/auth/session", headers=bearer(body["session"]["token"]))
    assert other.get_json()["user"]["username"] == "ada"


def test_login_accepts_email_case_insensitively(client):
    UserFactory(username="grace", email="grace@example.com")
    response = client.post(
        "/api/auth/login", json={"username": "Grace@Example.com", "password": TEST_PASSWORD}
    )
    assert response.status_code == 200
    assert response.get_json()["user"]["username"] == "grace"


def test_session_without_token_is_null(client):
    response = client.get("/api/auth/session")
    assert response.status_code == 200
    assert response.get_json() == {"user": None}


def test_wrong_password_and_unknown_user_get_the_same_401(client):
    UserFactory(username="linus")
    wrong = client.post("/api/auth/login", json={"username": "linus", "password": "nope-nope"})
    unknown = client.post("/api/auth/login", json={"username": "nobody", "password": "nope-nope"})
    a = assert_error(wrong, 401, "invalid_credentials")
    b = assert_error(unknown, 401, "invalid_credentials")
    assert a == b


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"username": "x"}, "username"),
        ({"username": "bad name!"}, "username"),
        ({"username": "a" * 33}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "é" * 40}, "password"),  # 80 bytes: more than bcrypt reads
        ({"email": None}, "email"),
    ],
)
def test_register_rejects_invalid_fields_with_422(client, overrides, field):
    body = assert_error(register(client, **overrides), 422, "validation_error")
    assert field in body["errors"]


def test_register_missing_fields_and_unknown_fields(client):
    body = assert_error(client.post("/api/auth/register", json={}), 422, "validation_error")
    assert set(body["errors"]) == {"email", "username", "password"}
    body = assert_error(register(client, admin=True), 422, "validation_error")
    assert "admin" in body["errors"]


def test_malformed_json_is_a_400_not_a_500(client):
    response = client.post(
        "/api/auth/login", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("overrides", "code"),
    [({"username": "someone-else"}, "email_taken"), ({"email": "x@example.com"}, "username_taken")],
)
def test_duplicate_email_or_username_is_409(client, overrides, code):
    assert register(client).status_code == 201
    assert_error(register(client, **overrides), 409, code)


def test_duplicate_is_case_insensitive(client):
    assert register(client).status_code == 201
    assert_error(register(client, username="ADA", email="other@example.com"), 409, "username_taken")
    assert_error(register(client, username="other", email="ADA@Example.COM"), 409, "email_taken")


def test_password_is_stored_only_as_bcrypt_hash(client, session):
    assert register(client).status_code == 201
    user = session.scalars(select(User).where(User.username == "ada")).one()
    assert user.password_hash.startswith("$2b$")
    assert "s3cret-pass!" not in user.password_hash
    assert user.auth_provider == "local"
    assert user.is_admin is False


def test_cookie_login_requires_csrf_header_for_state_changes(client):
    assert register(client).status_code == 201
    login = client.post("/api/auth/login", json={"username": "ada", "password": "s3cret-pass!"})
    cookies = {c.key: c for c in client._cookies.values()}
    assert cookies["access_token_cookie"].http_only is True
    csrf = cookies["csrf_access_token"].value
    assert login.status_code == 200

    # Reads with the cookie alone work.
    session = client.get("/api/auth/session")
    assert session.get_json()["user"]["username"] == "ada"
    # A state change without the double-submit header is refused...
    assert_error(client.post("/api/auth/logout"), 401, "csrf_failed")
    assert_error(
        client.post("/api/auth/logout", headers={"X-CSRF-TOKEN": "forged"}), 401, "csrf_failed"
    )
    # ...and accepted with it; logout clears the cookies.
    out = client.post("/api/auth/logout", headers={"X-CSRF-TOKEN": csrf})
    assert out.status_code == 200
    assert client.get("/api/auth/session").get_json() == {"user": None}


def test_garbage_token_is_401_with_common_shape(client):
    assert_error(
        client.get("/api/auth/session", headers=bearer("abc.def.ghi")), 401, "invalid_token"
    )
    assert_error(client.post("/api/auth/logout"), 401, "unauthorized")


def test_token_of_deleted_user_is_refused(client, session):
    token = register(client).get_json()["session"]["token"]
    session.delete(session.scalars(select(User).where(User.username == "ada")).one())
    session.flush()
    assert_error(client.get("/api/auth/session", headers=bearer(token)), 401, "invalid_token")


def test_no_password_or_token_reaches_the_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    token = register(client).get_json()["session"]["token"]
    client.post("/api/auth/login", json={"username": "ada", "password": "s3cret-pass!"})
    client.post("/api/auth/login", json={"username": "ada", "password": "wrong-password"})
    client.get("/api/auth/session", headers=bearer(token))
    client.post("/api/auth/logout", headers=bearer(token))
    text = caplog.text
    assert "login failed: wrong password" in text  # the events are logged...
    assert "s3cret-pass!" not in text  # ...without their secrets
    assert "wrong-password" not in text
    assert token not in text


def test_the_101st_request_in_a_minute_gets_429(client):
    statuses = [client.get("/api/auth/session").status_code for _ in range(100)]
    assert statuses == [200] * 100
    limited = client.get("/api/auth/session")
    body = assert_error(limited, 429, "rate_limited")
    assert "100 per 1 minute" in body["message"]
    assert int(limited.headers["Retry-After"]) > 0


def test_login_has_a_tighter_limit(client, app):
    limit = int(app.config["RATELIMIT_AUTH"].split()[0])
    for _ in range(limit):
        client.post("/api/auth/login", json={"username": "nobody", "password": "whatever1"})
    assert_error(
        client.post("/api/auth/login", json={"username": "nobody", "password": "whatever1"}),
        429,
        "rate_limited",
    )


def test_health_probes_are_not_rate_limited(client):
    for _ in range(105):
        assert client.get("/healthz").status_code == 200
