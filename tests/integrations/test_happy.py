"""HappyClient against the Happy double (real HTTP, real ed25519 and secretbox)."""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
import requests
from nacl.signing import SigningKey

from app.errors import PermanentError, TransientError
from app.integrations import happy
from app.integrations.happy import HappyClient, HappyCredentials
from tests.support.happy_double import HappyDouble, make_secret, seal


def _public_key(secret: bytes) -> bytes:
    return bytes(SigningKey(secret).verify_key)


def _register_machine(double: HappyDouble, token: str, machine: dict[str, object]) -> None:
    """Register a machine the way the CLI does (POST /v1/machines)."""
    response = requests.post(
        f"{double.url}/v1/machines",
        json=machine,
        timeout=5,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text


# --- accounts ------------------------------------------------------------------------------


def test_create_account_returns_token_the_double_accepts(
    happy_double: HappyDouble, happy_client: HappyClient
) -> None:
    secret = make_secret()

    token = happy_client.create_account(secret)

    account = happy_double.account_for_public_key(_public_key(secret))
    assert account is not None
    assert happy_double.account_for_token(token) == account
    assert happy_client.get_profile(token) == account
    assert len(token) > 200


def test_create_account_twice_upserts_by_public_key_with_new_valid_token(
    happy_double: HappyDouble, happy_client: HappyClient
) -> None:
    secret = make_secret()
    accounts_before = happy_double.accounts

    first = happy_client.create_account(secret)
    second = happy_client.create_account(secret)

    assert first != second
    assert happy_client.get_profile(first) == happy_client.get_profile(second)
    assert happy_double.accounts == accounts_before + 1


def test_credentials_access_key_is_standard_padded_base64_of_the_secret() -> None:
    secret = make_secret()
    creds = HappyCredentials(secret, "tok")

    content = json.loads(creds.access_key_json())

    assert content == {"secret": base64.b64encode(secret).decode(), "token": "tok"}
    assert "+" in content["secret"] and "/" in content["secret"]
    assert repr(creds) == "HappyCredentials()"  # secrets stay out of logs and tracebacks


def test_wrong_signature_is_rejected_as_permanent_error(
    happy_client: HappyClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sign = happy.sign_challenge

    def sign_with_other_key(secret: bytes, challenge: bytes) -> dict[str, str]:
        body = real_sign(secret, challenge)
        body["signature"] = real_sign(make_secret(), challenge)["signature"]
        return body

    monkeypatch.setattr(happy, "sign_challenge", sign_with_other_key)

    with pytest.raises(PermanentError) as caught:
        happy_client.create_account(make_secret())
    assert "401" in str(caught.value) and "Invalid signature" in str(caught.value)


def test_reject_auth_switch_gives_permanent_error(
    happy_double: HappyDouble, happy_client: HappyClient
) -> None:
    happy_double.reject_auth = True

    with pytest.raises(PermanentError):
        happy_client.create_account(make_secret())


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retryable_statuses_are_transient_then_next_call_succeeds(
    happy_double: HappyDouble, happy_client: HappyClient, status: int
) -> None:
    happy_double.fail_next(1, status=status)
    secret = make_secret()

    with pytest.raises(TransientError):
        happy_client.create_account(secret)
    assert happy_client.create_account(secret)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_error_statuses_are_permanent(
    happy_double: HappyDouble, happy_client: HappyClient, status: int
) -> None:
    happy_double.fail_next(1, status=status)

    with pytest.raises(PermanentError):
        happy_client.create_account(make_secret())


def test_hanging_server_times_out_as_transient(happy_double: HappyDouble) -> None:
    client = HappyClient(happy_double.url, timeout=(0.5, 0.3))
    happy_double.hang = 3.0

    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        client.create_account(make_secret())
    assert time.monotonic() - started < 1.5


def test_refused_connection_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        client = HappyClient(f"http://127.0.0.1:{port}", timeout=(0.5, 0.5))
        with pytest.raises(TransientError):
            client.create_account(make_secret())


def test_invalid_token_is_permanent_and_never_quoted(happy_client: HappyClient) -> None:
    token = "not-a-token-" + os.urandom(8).hex()

    for call in (
        lambda: happy_client.get_profile(token),
        lambda: happy_client.list_machines(token, make_secret()),
    ):
        with pytest.raises(PermanentError) as caught:
            call()
        assert "Invalid token" in str(caught.value)
        assert token not in str(caught.value) and token not in caught.value.safe_message


# --- machines ------------------------------------------------------------------------------


def test_list_machines_opens_daemon_state_and_tolerates_unreadable_fields(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    secret = credentials.secret
    running = {"status": "running", "pid": 42, "httpPort": 4000, "startedAt": 1}
    _register_machine(
        happy_double,
        credentials.token,
        {
            "id": "m-readable",
            "metadata": seal(secret, {"host": "box"}),
            "daemonState": seal(secret, running),
        },
    )
    _register_machine(
        happy_double,
        credentials.token,
        {
            "id": "m-foreign",
            "metadata": seal(make_secret(), {"host": "x"}),
            "daemonState": "bm90IGEgc2VhbGVkIGJveA==",
        },
    )
    _register_machine(
        happy_double,
        credentials.token,
        {"id": "m-no-state", "metadata": seal(secret, {"host": "y"})},
    )

    machines = {m.id: m for m in happy_client.list_machines(credentials.token, secret)}

    assert machines["m-readable"].daemon_state == running
    assert machines["m-readable"].daemon_status == "running"
    assert machines["m-readable"].metadata == {"host": "box"}
    assert machines["m-foreign"].metadata is None
    assert machines["m-foreign"].daemon_status is None
    assert machines["m-no-state"].daemon_state is None
    assert machines["m-no-state"].metadata == {"host": "y"}


# --- the double keeps to docs/happy.md (what the real server does) --------------------------


def _auth_body(secret: bytes) -> dict[str, str]:
    key = SigningKey(secret)
    challenge = os.urandom(32)
    return {
        "publicKey": base64.b64encode(bytes(key.verify_key)).decode(),
        "challenge": base64.b64encode(challenge).decode(),
        "signature": base64.b64encode(key.sign(challenge).signature).decode(),
    }


def test_double_answers_auth_errors_like_the_real_server(happy_double: HappyDouble) -> None:
    url = f"{happy_double.url}/v1/auth"
    good = _auth_body(make_secret())
    bad_signature = {**good, "signature": _auth_body(make_secret())["signature"]}
    # 32 bytes whose base64url starts with "-_-_" (standard: "+/+/"), so it is not valid base64.
    url_safe = {**good, "publicKey": base64.urlsafe_b64encode(make_secret()).decode()}

    assert requests.post(url, json=good, timeout=5).status_code == 200
    answer = requests.post(url, json=bad_signature, timeout=5)
    assert (answer.status_code, answer.json()) == (401, {"error": "Invalid signature"})
    assert requests.post(url, json={"publicKey": good["publicKey"]}, timeout=5).status_code == 400
    assert requests.post(url, data=b"not json", timeout=5).status_code == 400
    assert requests.post(url, json=url_safe, timeout=5).status_code == 500
    short_key = {**good, "publicKey": base64.b64encode(b"x" * 31).decode()}
    assert requests.post(url, json=short_key, timeout=5).status_code == 500


def test_double_bearer_errors_match_the_contract(happy_double: HappyDouble) -> None:
    url = f"{happy_double.url}/v1/machines"
    missing = requests.get(url, timeout=5)
    invalid = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)

    assert (missing.status_code, missing.json()) == (401, {"error": "Missing authorization header"})
    assert (invalid.status_code, invalid.json()) == (401, {"error": "Invalid token"})
