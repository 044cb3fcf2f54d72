"""POST /api/vibeboxes/<id>/connect: the web URL and secret key, and device linking.

Real PostgreSQL, the Happy double over real HTTP; the new Happy device is played as the
released app plays it (tests/support/happy_app.py)."""

from __future__ import annotations

import base64
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import select

from app.config import Settings
from app.crypto import encrypt_str
from app.integrations.happy import (
    HappyClient,
    parse_secret_key_backup,
    secret_key_backup,
)
from app.models import HappyAccount, Server, VibeBox
from app.services.boxes import happy_accounts
from tests.factories import UserFactory
from tests.support.happy_app import HappyAppDevice
from tests.support.happy_double import HappyDouble, make_secret

APPROVE = "POST /v1/auth/account/response"
BACKUP_FORMAT = re.compile(r"^([A-Z2-7]{5}-){10}[A-Z2-7]{2}$")


@dataclass
class Owner:
    headers: dict[str, str]
    user_id: uuid.UUID
    box_id: uuid.UUID
    secret: bytes = field(repr=False)
    token: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"/api/vibeboxes/{self.box_id}/connect"

    def secrets(self) -> list[str]:
        return [self.token, base64.b64encode(self.secret).decode(), secret_key_backup(self.secret)]


@pytest.fixture
def happy_settings(
    app: Any, settings: Settings, happy_double: HappyDouble, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The API talks to the Happy double (short timeouts); faults never leak between tests."""
    patched = replace(
        settings,
        happy_server_url=happy_double.url,
        provisioning=replace(settings.provisioning, happy_timeout_seconds=2.0),
    )
    monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", patched)
    happy_double.reset_faults()
    yield patched
    happy_double.reset_faults()


def _make_owner(
    app: Any,
    session: Any,
    settings: Settings,
    happy_double: HappyDouble,
    monkeypatch: pytest.MonkeyPatch,
    *,
    status: str = "running",
) -> Owner:
    """A user with a Happy account on the double and one box in ``status``."""
    user = UserFactory()
    secret = make_secret()  # standard base64 has "+" and "/"
    monkeypatch.setattr(happy_accounts, "generate_secret", lambda: secret)
    happy_accounts.reserve_account(session, user.id, settings.encryption_key)
    token = HappyClient(happy_double.url).create_account(secret)
    happy_accounts.store_token(session, user.id, token, settings.encryption_key)
    server_id = None
    if status == "running":
        server = Server(
            host=f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}",
            ssh_port=22,
            ssh_user=f"u{uuid.uuid4().hex[:8]}",
            auth_method="password",
            credential_encrypted=encrypt_str(bytes(32), "x"),
            host_key_fingerprint="SHA256:" + "c" * 43,
            cpu_cores=2,
            ram_gb=4,
            disk_gb=40,
            state="allocated",
        )
        session.add(server)
        session.flush()
        server_id = server.id
    box = VibeBox(user_id=user.id, plan_id="basic", status=status, server_id=server_id)
    session.add(box)
    session.commit()
    with app.app_context():
        headers = {"Authorization": f"Bearer {create_access_token(identity=user)}"}
    return Owner(headers=headers, user_id=user.id, box_id=box.id, secret=secret, token=token)


@pytest.fixture
def owner(app, session, happy_settings, happy_double, monkeypatch) -> Owner:  # type: ignore[no-untyped-def]
    return _make_owner(app, session, happy_settings, happy_double, monkeypatch)


@pytest.fixture
def device(happy_double: HappyDouble) -> HappyAppDevice:
    """A Happy app on its link screen: it has already asked Happy (authQRStart)."""
    new_device = HappyAppDevice(happy_double.url)
    assert new_device.request() == {"state": "requested"}
    return new_device


def _assert_clean(response: Any, owner: Owner, *extra: str) -> None:
    """No credential and no link payload in an error answer; never cached."""
    text = response.get_data(as_text=True)
    for secret in [*owner.secrets(), *extra]:
        assert secret not in text
    assert response.headers["Cache-Control"] == "no-store"


# --- no body: the web URL and the secret key ----------------------------------------------


@pytest.mark.parametrize(
    "send",
    [
        pytest.param({}, id="no-body-no-content-type"),
        pytest.param({"json": {}}, id="empty-json-object"),
        pytest.param({"data": b"", "content_type": "application/json"}, id="empty-json-body"),
    ],
)
def test_connect_without_link_gives_web_url_and_secret_key(
    client: Any, owner: Owner, send: dict[str, Any]
) -> None:
    response = client.post(owner.url, headers=owner.headers, **send)

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"happyWebUrl", "secretKey"}
    assert BACKUP_FORMAT.match(body["secretKey"])
    assert body["secretKey"] == secret_key_backup(owner.secret)
    assert parse_secret_key_backup(body["secretKey"]) == owner.secret
    assert body["happyWebUrl"].endswith("&embedded=true")
    assert "token=" in body["happyWebUrl"]


# --- device linking -----------------------------------------------------------------------


def test_device_link_signs_the_happy_app_in(
    client: Any, owner: Owner, device: HappyAppDevice, happy_double: HappyDouble
) -> None:
    response = client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"linked": True}
    assert response.headers["Cache-Control"] == "no-store"
    linked = device.wait()
    assert linked.secret == owner.secret
    profile = HappyClient(happy_double.url).get_profile
    assert profile(linked.token) == profile(owner.token)


def test_device_link_with_surrounding_whitespace_and_again_is_fine(
    client: Any, owner: Owner, device: HappyAppDevice
) -> None:
    for _ in range(2):  # Happy keeps the first answer; a second approval is harmless
        response = client.post(
            owner.url, headers=owner.headers, json={"deviceLink": f"  {device.link}\n"}
        )
        assert response.status_code == 200, response.get_json()
    assert device.wait().secret == owner.secret


KEY = base64.urlsafe_b64encode(bytes.fromhex("fbffbf") + bytes(range(1, 30))).decode().rstrip("=")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"deviceLink": ""}, id="empty"),
        pytest.param({"deviceLink": "happy:///account?"}, id="no-key"),
        pytest.param({"deviceLink": "happy:///account?\x00" + KEY[1:]}, id="nul-byte"),
        pytest.param({"deviceLink": "happy:///account?" + "A" * 10_000}, id="10kB"),
        pytest.param({"deviceLink": "x" * 10_000}, id="10kB-junk"),
        pytest.param({"deviceLink": "https://app.happy.engineering/?" + KEY}, id="wrong-scheme"),
        pytest.param({"deviceLink": "happy://account?" + KEY}, id="wrong-path"),
        pytest.param({"deviceLink": "happy://terminal?" + KEY}, id="terminal-link"),
        pytest.param({"deviceLink": "happy:///account?" + KEY[:-2]}, id="short-key"),
        pytest.param({"deviceLink": "happy:///account?" + KEY + "AAAA"}, id="long-key"),
        pytest.param({"deviceLink": "happy:///account?" + "A" * 43}, id="zero-key"),
        pytest.param(
            {"deviceLink": "happy:///account?" + KEY.replace("-", "+").replace("_", "/")},
            id="standard-base64",
        ),
        pytest.param({"deviceLink": None}, id="null"),
        pytest.param({"deviceLink": 42}, id="number"),
        pytest.param({"deviceLink": ["happy:///account?" + KEY]}, id="list"),
        pytest.param({"deviceLink": "happy:///account?" + KEY, "token": "x"}, id="unknown-field"),
    ],
)
def test_malformed_device_link_is_422(
    client: Any, owner: Owner, happy_double: HappyDouble, body: dict[str, Any]
) -> None:
    approvals = happy_double.calls(APPROVE)

    response = client.post(owner.url, headers=owner.headers, json=body)

    assert response.status_code == 422, response.get_json()
    answer = response.get_json()
    assert answer["code"] == "validation_error"
    assert set(answer["errors"]) <= {"deviceLink", "token"} and answer["errors"]
    _assert_clean(response, owner, KEY)
    assert happy_double.calls(APPROVE) == approvals


@pytest.mark.parametrize(
    "body", [pytest.param([], id="list"), pytest.param("happy:///account?", id="string")]
)
def test_json_that_is_not_an_object_is_422(client: Any, owner: Owner, body: Any) -> None:
    response = client.post(owner.url, headers=owner.headers, json=body)
    assert response.status_code == 422
    assert response.get_json()["code"] == "validation_error"


def test_body_that_is_not_json_is_refused_not_ignored(
    client: Any, owner: Owner, device: HappyAppDevice
) -> None:
    form = client.post(owner.url, headers=owner.headers, data={"deviceLink": device.link})
    broken = client.post(
        owner.url, headers=owner.headers, data=b"{", content_type="application/json"
    )

    assert (form.status_code, form.get_json()["code"]) == (415, "unsupported_media_type")
    assert (broken.status_code, broken.get_json()["code"]) == (400, "invalid_json")
    _assert_clean(form, owner)
    assert device.request() == {"state": "requested"}


# --- whose box, which state ---------------------------------------------------------------


def test_another_users_box_is_404(
    app: Any,
    client: Any,
    session: Any,
    owner: Owner,
    happy_settings: Settings,
    happy_double: HappyDouble,
    device: HappyAppDevice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stranger = _make_owner(app, session, happy_settings, happy_double, monkeypatch)

    for body in (None, {"deviceLink": device.link}):
        response = client.post(owner.url, headers=stranger.headers, json=body)
        assert response.status_code == 404
        assert response.get_json()["code"] == "vibebox_not_found"
        _assert_clean(response, owner)
    assert device.request() == {"state": "requested"}


def test_unknown_box_is_404_and_no_token_is_401(client: Any, owner: Owner) -> None:
    unknown = client.post(f"/api/vibeboxes/{uuid.uuid4()}/connect", headers=owner.headers)
    anonymous = client.post(owner.url)

    assert unknown.status_code == 404
    assert anonymous.status_code == 401
    assert anonymous.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("status", ["provisioning", "stopped", "error"])
def test_box_that_is_not_running_is_409(
    app: Any,
    client: Any,
    session: Any,
    happy_settings: Settings,
    happy_double: HappyDouble,
    device: HappyAppDevice,
    monkeypatch: pytest.MonkeyPatch,
    status: str,
) -> None:
    owner = _make_owner(app, session, happy_settings, happy_double, monkeypatch, status=status)

    for body in (None, {}, {"deviceLink": device.link}):
        response = client.post(owner.url, headers=owner.headers, json=body)
        assert response.status_code == 409, response.get_json()
        assert response.get_json()["code"] == "vibebox_not_running"
        assert response.get_json()["status"] == status
        _assert_clean(response, owner)
    assert device.request() == {"state": "requested"}


# --- Happy refusing or failing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "happy_link_failed"),
        (403, "happy_link_failed"),
        (400, "happy_link_failed"),
        (429, "happy_unavailable"),
        (500, "happy_unavailable"),
        (503, "happy_unavailable"),
    ],
)
def test_happy_refusing_or_failing_is_502_then_a_retry_links(
    client: Any,
    owner: Owner,
    device: HappyAppDevice,
    happy_double: HappyDouble,
    status: int,
    code: str,
) -> None:
    happy_double.fail_next(1, status=status, path="/v1/auth/account/response")

    failed = client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})

    assert failed.status_code == 502, failed.get_json()
    assert failed.get_json()["code"] == code
    _assert_clean(failed, owner, device.link[len("happy:///account?") :])
    assert device.request() == {"state": "requested"}

    retried = client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})
    assert retried.status_code == 200
    assert device.wait().secret == owner.secret


def test_link_happy_never_saw_is_502_happy_link_failed(
    client: Any, owner: Owner, happy_double: HappyDouble
) -> None:
    never_requested = HappyAppDevice(happy_double.url)  # its app never called /request

    response = client.post(
        owner.url, headers=owner.headers, json={"deviceLink": never_requested.link}
    )

    assert response.status_code == 502
    answer = response.get_json()
    assert answer["code"] == "happy_link_failed"
    assert "link screen" in answer["message"]
    _assert_clean(response, owner)


def test_invalid_happy_token_is_502_happy_link_failed(
    client: Any, owner: Owner, device: HappyAppDevice, session: Any, happy_settings: Settings
) -> None:
    account = session.scalars(
        select(HappyAccount).where(HappyAccount.user_id == owner.user_id)
    ).one()
    account.token_encrypted = encrypt_str(
        happy_settings.encryption_key, "revoked-token", aad=f"happy:{owner.user_id}:token"
    )
    session.commit()

    response = client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})

    assert response.status_code == 502
    assert response.get_json()["code"] == "happy_link_failed"
    assert "revoked-token" not in response.get_data(as_text=True)


def test_unreachable_happy_is_502_happy_unavailable(
    app: Any,
    client: Any,
    owner: Owner,
    device: HappyAppDevice,
    happy_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = replace(happy_settings, happy_server_url="http://127.0.0.1:9")
    monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", closed)

    response = client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})

    assert response.status_code == 502
    assert response.get_json()["code"] == "happy_unavailable"
    _assert_clean(response, owner)
    # The web URL and the secret key need no Happy call: still served.
    assert client.post(owner.url, headers=owner.headers).status_code == 200


def test_hanging_happy_times_out_as_502(
    app: Any,
    client: Any,
    owner: Owner,
    device: HappyAppDevice,
    happy_settings: Settings,
    happy_double: HappyDouble,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quick = replace(
        happy_settings,
        provisioning=replace(happy_settings.provisioning, happy_timeout_seconds=0.3),
    )
    monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", quick)
    happy_double.hang = 2.0

    response = client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})

    assert response.status_code == 502
    assert response.get_json()["code"] == "happy_unavailable"


# --- nothing secret in the logs -----------------------------------------------------------


def test_logs_never_carry_credentials_or_the_link(
    client: Any,
    owner: Owner,
    device: HappyAppDevice,
    happy_double: HappyDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stale = HappyAppDevice(happy_double.url)

    client.post(owner.url, headers=owner.headers)
    client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})
    client.post(owner.url, headers=owner.headers, json={"deviceLink": stale.link})
    happy_double.fail_next(1, status=500, path="/v1/auth/account/response")
    client.post(owner.url, headers=owner.headers, json={"deviceLink": device.link})

    assert "linked a Happy device" in caplog.text
    for secret in owner.secrets():
        assert secret not in caplog.text
    for link in (device.link, stale.link):
        assert link[len("happy:///account?") :] not in caplog.text


def test_openapi_documents_the_optional_body_and_the_secret_key(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/api/vibeboxes/{box_id}/connect"]["post"]

    assert operation["requestBody"]["required"] is False
    schemas = spec["components"]["schemas"]
    assert "Restore" in schemas["ConnectResponse"]["properties"]["secretKey"]["description"]
    assert "deviceLink" in schemas["ConnectRequest"]["properties"]
