"""Signing a Happy app in to an existing account: device linking against the Happy double
over real HTTP (the app side played by :class:`HappyAppDevice`), and the secret key backup
format of the Happy app."""

from __future__ import annotations

import base64
import os

import pytest
import requests
from nacl.public import Box, PrivateKey, PublicKey

from app.errors import PermanentError, TransientError
from app.integrations import happy
from app.integrations.happy import (
    HappyClient,
    HappyCredentials,
    HappyRefusedError,
    parse_device_link,
    parse_secret_key_backup,
    secret_key_backup,
)
from tests.support.happy_app import HappyAppDevice
from tests.support.happy_double import HappyDouble, make_secret

RESPONSE = "POST /v1/auth/account/response"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _secrets_of(creds: HappyCredentials) -> list[str]:
    return [creds.token, creds.secret_b64, secret_key_backup(creds.secret)]


# --- the whole flow, app side against our client -------------------------------------------


def test_device_link_signs_the_app_in_with_the_account_secret(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    assert {"+", "/"} & set(credentials.secret_b64)  # base64 vs base64url mix-ups would show
    device = HappyAppDevice(happy_double.url)

    assert device.request() == {"state": "requested"}  # no token before approval
    happy_client.approve_account_link(
        credentials.token, credentials.secret, parse_device_link(device.link)
    )
    linked = device.wait()

    assert linked.secret == credentials.secret
    assert linked.token != credentials.token
    assert happy_client.get_profile(linked.token) == happy_client.get_profile(credentials.token)


def test_authorized_request_hands_out_a_new_valid_token_each_poll(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    device = HappyAppDevice(happy_double.url)
    device.request()
    happy_client.approve_account_link(credentials.token, credentials.secret, device.public_key)

    first, second = device.request(), device.request()

    assert first["state"] == second["state"] == "authorized"
    assert set(first) == {"state", "token", "response"}
    assert first["token"] != second["token"]
    account = happy_client.get_profile(credentials.token)
    assert happy_client.get_profile(first["token"]) == happy_client.get_profile(second["token"])
    assert happy_client.get_profile(first["token"]) == account


def test_approval_sends_standard_base64_and_the_apps_box_layout(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    device_key = PrivateKey.generate()
    device = bytes(device_key.public_key)
    requests.post(
        f"{happy_double.url}/v1/auth/account/request",
        json={"publicKey": base64.b64encode(device).decode()},
        timeout=5,
    ).raise_for_status()

    happy_client.approve_account_link(credentials.token, credentials.secret, device)

    stored = happy_double.account_request(device)
    assert stored is not None and stored["response"] is not None
    bundle = base64.b64decode(stored["response"], validate=True)  # STANDARD alphabet
    assert len(bundle) == 32 + 24 + 16 + 32  # ephemeral key, nonce, MAC, secret
    ephemeral, nonce, ciphertext = bundle[:32], bundle[32:56], bundle[56:]
    opened = Box(device_key, PublicKey(ephemeral)).decrypt(ciphertext, nonce)
    assert opened == credentials.secret
    assert happy.decrypt_box(bundle, bytes(device_key)) == credentials.secret
    assert stored["account"] == happy_client.get_profile(credentials.token)


def test_first_approval_wins(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    other_secret = make_secret()
    other = HappyCredentials(other_secret, happy_client.create_account(other_secret))
    device = HappyAppDevice(happy_double.url)
    device.request()

    happy_client.approve_account_link(credentials.token, credentials.secret, device.public_key)
    happy_client.approve_account_link(other.token, other.secret, device.public_key)  # no error

    assert device.wait().secret == credentials.secret


# --- refusals and faults -------------------------------------------------------------------


def test_unknown_device_key_is_refused_404_without_quoting_secrets(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    never_requested = bytes(PrivateKey.generate().public_key)

    with pytest.raises(HappyRefusedError) as caught:
        happy_client.approve_account_link(credentials.token, credentials.secret, never_requested)

    assert caught.value.status == 404
    assert "Request not found" in str(caught.value)
    assert "link screen" in caught.value.safe_message
    for secret in [*_secrets_of(credentials), base64.b64encode(never_requested).decode()]:
        assert secret not in str(caught.value) and secret not in caught.value.safe_message


def test_invalid_token_is_permanent(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    device = HappyAppDevice(happy_double.url)
    device.request()
    token = "not-a-token-" + os.urandom(8).hex()

    with pytest.raises(PermanentError) as caught:
        happy_client.approve_account_link(token, credentials.secret, device.public_key)

    assert "Invalid token" in str(caught.value) and token not in str(caught.value)
    assert device.request() == {"state": "requested"}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_server_failures_are_transient_and_a_retry_links(
    happy_double: HappyDouble,
    happy_client: HappyClient,
    credentials: HappyCredentials,
    status: int,
) -> None:
    device = HappyAppDevice(happy_double.url)
    device.request()
    happy_double.fail_next(1, status=status, path="/v1/auth/account/response")

    with pytest.raises(TransientError) as caught:
        happy_client.approve_account_link(credentials.token, credentials.secret, device.public_key)
    for secret in _secrets_of(credentials):
        assert secret not in str(caught.value)

    happy_client.approve_account_link(credentials.token, credentials.secret, device.public_key)
    assert device.wait().secret == credentials.secret


def test_unreachable_server_is_transient(credentials: HappyCredentials) -> None:
    client = HappyClient("http://127.0.0.1:9", timeout=(0.5, 0.5))
    with pytest.raises(TransientError):
        client.approve_account_link(credentials.token, credentials.secret, os.urandom(32))


def test_wrong_sizes_are_refused_before_any_request(
    happy_double: HappyDouble, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    before = happy_double.calls(RESPONSE)
    with pytest.raises(ValueError):
        happy_client.approve_account_link(credentials.token, credentials.secret, os.urandom(31))
    with pytest.raises(ValueError):
        happy_client.approve_account_link(credentials.token, os.urandom(16), os.urandom(32))
    assert happy_double.calls(RESPONSE) == before


def test_double_account_routes_answer_like_the_real_server(
    happy_double: HappyDouble, credentials: HappyCredentials
) -> None:
    url = happy_double.url
    bearer = {"Authorization": f"Bearer {credentials.token}"}
    short = base64.b64encode(os.urandom(31)).decode()
    key = base64.b64encode(os.urandom(32)).decode()
    url_safe = base64.urlsafe_b64encode(make_secret()).decode()  # "-_-_...": not base64

    def post(path: str, body: object, headers: dict[str, str] | None = None) -> tuple:
        answer = requests.post(f"{url}{path}", json=body, headers=headers, timeout=5)
        return answer.status_code, answer.json()

    request, response = "/v1/auth/account/request", "/v1/auth/account/response"
    assert post(request, {"publicKey": short}) == (401, {"error": "Invalid public key"})
    assert post(request, {})[0] == 400
    assert post(request, {"publicKey": url_safe})[0] == 500
    # Fastify validates the body before the Bearer check runs.
    assert post(response, {"publicKey": key})[0] == 400
    assert post(response, {"publicKey": key, "response": "x"}) == (
        401,
        {"error": "Missing authorization header"},
    )
    assert post(response, {"publicKey": key, "response": "x"}, {"Authorization": "Bearer no"}) == (
        401,
        {"error": "Invalid token"},
    )
    assert post(response, {"publicKey": short, "response": "x"}, bearer) == (
        401,
        {"error": "Invalid public key"},
    )
    assert post(response, {"publicKey": key, "response": "x"}, bearer) == (
        404,
        {"error": "Request not found"},
    )
    assert post(request, {"publicKey": key}) == (200, {"state": "requested"})
    assert post(request, {"publicKey": key}) == (200, {"state": "requested"})  # upsert
    assert post(response, {"publicKey": key, "response": "x"}, bearer) == (200, {"success": True})


# --- the device link -----------------------------------------------------------------------


def test_parse_device_link_reads_the_apps_link() -> None:
    public_key = bytes(PrivateKey.generate().public_key)
    link = "happy:///account?" + _b64url(public_key)

    assert len(link) == 60
    assert happy.device_link(public_key) == link
    assert parse_device_link(link) == public_key
    assert parse_device_link(f"  {link}\n") == public_key  # copy and paste
    assert parse_device_link(link + "=") == public_key  # padded base64url


KEY_B64URL = _b64url(bytes.fromhex("fbffbf") + bytes(range(1, 30)))  # "-_-_..." in base64url
STANDARD_ONLY = (bytes.fromhex("fbffbf") * 11)[:32]  # standard base64 "+/+/...": not base64url


@pytest.mark.parametrize(
    ("link", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="blank"),
        pytest.param("happy:///account?", "no key", id="no-key"),
        pytest.param("happy:///account?" + KEY_B64URL[:-1], "wrong length", id="42-chars"),
        pytest.param("happy:///account?" + _b64url(bytes(range(1, 32))), "wrong length", id="31B"),
        pytest.param("happy:///account?" + _b64url(bytes(range(1, 34))), "wrong length", id="33B"),
        pytest.param(
            "happy:///account?" + base64.b64encode(STANDARD_ONLY).decode(),
            "not base64url",
            id="standard-base64",
        ),
        pytest.param("happy:///account?\x00" + KEY_B64URL[1:], "not base64url", id="nul-first"),
        pytest.param(
            "happy:///account?" + KEY_B64URL[:20] + "\x00" + KEY_B64URL[21:],
            "not base64url",
            id="nul-inside",
        ),
        pytest.param("happy:///account?key=" + KEY_B64URL, "not base64url", id="key-param"),
        pytest.param("happy:///account?" + KEY_B64URL + "&x=1", "not base64url", id="extra-param"),
        pytest.param("happy:///account?" + "A" * 43, "not a usable public key", id="zero-key"),
        pytest.param("happy:///account?" + "A" * 10_000, "too long", id="10k-link"),
        pytest.param("x" * 10_000, "too long", id="10k-junk"),
        pytest.param(
            "https://app.happy.engineering/account?" + KEY_B64URL,
            "starts with happy:///account?",
            id="https",
        ),
        pytest.param(
            "happy://account?" + KEY_B64URL, "starts with happy:///account?", id="two-slashes"
        ),
        pytest.param(
            "HAPPY:///ACCOUNT?" + KEY_B64URL, "starts with happy:///account?", id="upper-case"
        ),
        pytest.param(
            "happy:///terminal?" + KEY_B64URL, "starts with happy:///account?", id="other-path"
        ),
        pytest.param("happy://terminal?" + KEY_B64URL, "terminal link", id="terminal-link"),
        pytest.param(KEY_B64URL, "starts with happy:///account?", id="bare-key"),
    ],
)
def test_parse_device_link_refuses_malformed_links(link: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_device_link(link)
    assert KEY_B64URL not in str(caught.value)
    assert len(str(caught.value)) < 200


def test_encrypt_box_refuses_a_low_order_key() -> None:
    with pytest.raises(ValueError):
        happy.encrypt_box(make_secret(), bytes(32))


# --- the secret key backup format ----------------------------------------------------------


def _backup_by_hand(secret: bytes) -> str:
    """secretKeyBackup.ts, derived independently: the 256 bits MSB first, padded with 4 zero
    bits to 52 five-bit digits of "A-Z2-7", in groups of 5 joined by "-"."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    number = int.from_bytes(secret, "big") << 4
    digits = "".join(alphabet[(number >> (5 * (51 - i))) & 31] for i in range(52))
    return "-".join(digits[i : i + 5] for i in range(0, 52, 5))


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        # 256 one-bits: 51 digits "7" (11111), then 1 bit + 4 padding zeros = 10000 = "Q".
        (b"\xff" * 32, "-".join(["77777"] * 10 + ["7Q"])),
        (bytes(32), "-".join(["AAAAA"] * 10 + ["AA"])),
        # 00 01 02 03 04 -> 00000 00000 00000 10000 00100 00000 11000 00100 = AAAQE AYE...
        (bytes(range(32)), "AAAQE-AYEAU-DAOCA-JBIFQ-YDIOB-4IBCE-QTCQK-RMFYY-DENBW-HA5DY-PQ"),
    ],
)
def test_secret_key_backup_is_the_apps_format(secret: bytes, expected: str) -> None:
    assert secret_key_backup(secret) == expected == _backup_by_hand(secret)
    assert parse_secret_key_backup(expected) == secret


def test_secret_key_backup_round_trips_and_matches_the_hand_derivation() -> None:
    for secret in [make_secret() for _ in range(50)]:
        formatted = secret_key_backup(secret)
        assert formatted == _backup_by_hand(secret)
        assert len(formatted) == 52 + 10 and formatted.count("-") == 10
        assert parse_secret_key_backup(formatted) == secret


def test_parse_secret_key_backup_is_as_lenient_as_the_app() -> None:
    """parseBackupSecretKey: any case, any separators and quotes, 0/1/8/9 read as O/I/B/G."""
    secret = bytes(range(32))
    formatted = secret_key_backup(secret)

    assert parse_secret_key_backup(f'"{formatted.lower().replace("-", " - ")}"\n') == secret
    assert parse_secret_key_backup(formatted.replace("-", "")) == secret
    substituted = 0
    for secret in [make_secret() for _ in range(50)]:
        formatted = secret_key_backup(secret)
        typo = formatted.translate(str.maketrans("OIBG", "0189"))
        substituted += typo != formatted
        assert parse_secret_key_backup(typo) == secret
    assert substituted > 40


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no valid characters"),
        ("!!! --- !!!", "no valid characters"),
        ("AAAAA-BBBBB", "invalid key length"),
        (secret_key_backup(bytes(32)) + "-A", "invalid key length"),
    ],
)
def test_parse_secret_key_backup_refuses_wrong_keys(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_secret_key_backup(text)


def test_secret_key_backup_needs_32_bytes() -> None:
    with pytest.raises(ValueError):
        secret_key_backup(bytes(31))
