"""Admin pool API: real PostgreSQL, real sshd boxes for everything that logs in."""

# ruff: noqa: F811 - pytest fixtures imported from tests.pool_fixtures

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text, update

from app.models import Server, VibeBox
from app.services import pool
from tests.api.test_admin_guard import token_for
from tests.factories import AdminFactory, UserFactory
from tests.pool_fixtures import (  # noqa: F401 - fixtures used by name
    BOX_PASSWORD,
    CLOSED_HAPPY_URL,
    fake_fingerprint,
    key_box,
    make_box,
    make_server,
    npm_installed_happy,
    password_box,
    pool_fleet,
)
from tests.support.sshd import SUDOERS_DIR

SERVER_FIELDS = {
    "id",
    "host",
    "port",
    "user",
    "authMethod",
    "hostKeyFingerprint",
    "gateway",
    "cpuCores",
    "ramGb",
    "diskGb",
    "region",
    "label",
    "state",
    "consecutiveFailures",
    "lastCheckedAt",
    "lastLatencyMs",
    "lastError",
    "allocatedBoxId",
    "cloudProviderId",
    "cloudNodeId",
    "cloudSize",
    "priceMonthlyCents",
    "idleSince",
    "createdAt",
}


@pytest.fixture
def admin(app):
    return token_for(app, AdminFactory())


def key_body(box, **extra):
    body = {
        "host": "127.0.0.1",
        "port": box.port,
        "user": box.user,
        "privateKey": box.client_key.private_pem,
        "cpuCores": 2,
        "ramGb": 4,
        "diskGb": 40,
    }
    body.update(extra)
    return body


def server_count(session) -> int:
    return session.scalar(select(func.count()).select_from(Server))


def raw_credential(session, server_id) -> bytes:
    return bytes(
        session.execute(
            text("SELECT credential_encrypted FROM servers WHERE id = :id"), {"id": server_id}
        ).scalar_one()
    )


def test_add_a_real_box_with_a_key(client, admin, session, key_box):
    response = client.post(
        "/api/admin/servers",
        json=key_body(key_box, region="eu-1", label="rack 3"),
        headers=admin,
    )
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert set(doc) == SERVER_FIELDS | {"checks"}  # never the credential
    checks = doc["checks"]
    assert checks["skipped"] is False
    assert checks["happyServerUrl"] == key_box.happy_url
    assert checks["happyServerUrlSource"] == "login"
    assert checks["happyServerReach"] == "ok"
    assert checks["happyPath"].endswith("/happy")
    assert checks["happyVersion"] == "unknown"  # the test stand-in is no npm package
    assert doc["hostKeyFingerprint"] == key_box.host_key_fingerprint
    assert (doc["authMethod"], doc["state"], doc["allocatedBoxId"]) == ("key", "available", None)
    assert (doc["port"], doc["user"], doc["region"], doc["label"]) == (
        key_box.port,
        key_box.user,
        "eu-1",
        "rack 3",
    )
    stored = raw_credential(session, uuid.UUID(doc["id"]))
    key_lines = key_box.client_key.private_pem.strip().splitlines()
    assert b"PRIVATE KEY" not in stored
    assert all(line.encode() not in stored for line in key_lines[1:-1])
    assert "PRIVATE KEY" not in client.get("/api/admin/servers", headers=admin).get_data(True)


def test_add_a_real_box_with_a_password(client, admin, session, password_box):
    body = key_body(password_box, password=BOX_PASSWORD)
    del body["privateKey"]
    response = client.post("/api/admin/servers", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert doc["authMethod"] == "password"
    assert doc["hostKeyFingerprint"] == password_box.host_key_fingerprint
    assert BOX_PASSWORD.encode() not in raw_credential(session, uuid.UUID(doc["id"]))
    assert BOX_PASSWORD not in response.get_data(as_text=True)


def test_wrong_password_is_a_clear_422(client, admin, session, password_box):
    body = key_body(password_box, password="not-the-password")
    del body["privateKey"]
    response = client.post("/api/admin/servers", json=body, headers=admin)
    assert response.status_code == 422
    assert response.get_json()["code"] == "ssh_auth_failed"
    assert "login" in response.get_json()["message"]
    assert server_count(session) == 0


def test_a_login_without_passwordless_sudo_cannot_join_the_pool(client, admin, session, key_box):
    (SUDOERS_DIR / key_box.user).unlink()
    response = client.post("/api/admin/servers", json=key_body(key_box), headers=admin)
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == "server_check_failed"
    assert "passwordless sudo" in body["message"]
    assert server_count(session) == 0


def test_a_login_without_happy_on_its_path_cannot_join_the_pool(client, admin, session, key_box):
    key_box.path_override = "/usr/local/bin:/usr/bin:/bin"
    key_box.restart()  # its sessions now get a PATH without `happy`
    response = client.post("/api/admin/servers", json=key_body(key_box), headers=admin)
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == "server_check_failed" and "`happy` is not on" in body["message"]
    assert f"{key_box.user}@127.0.0.1:{key_box.port}" in body["message"]
    assert "npm install -g happy-coder --allow-scripts=happy-coder" in body["message"]
    assert server_count(session) == 0


def test_a_server_that_cannot_reach_its_happy_server_cannot_join_the_pool(
    client, admin, session, pool_fleet
):
    box = pool_fleet.new_box(happy_url=CLOSED_HAPPY_URL)
    try:
        response = client.post("/api/admin/servers", json=key_body(box), headers=admin)
    finally:
        pool_fleet.remove(box)
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == "server_check_failed"
    assert f"cannot reach the Happy server at {CLOSED_HAPPY_URL}" in body["message"]
    assert "set HAPPY_SERVER_URL in the login environment" in body["message"]
    assert "skipChecks" in body["message"]
    assert server_count(session) == 0


def test_skip_checks_admits_a_server_that_fails_them_and_says_so(
    client, admin, session, pool_fleet, caplog
):
    box = pool_fleet.new_box(happy_url=CLOSED_HAPPY_URL)
    box.path_override = "/usr/local/bin:/usr/bin:/bin"  # no `happy` either
    box.restart()
    fingerprint = box.host_key_fingerprint
    try:
        wrong_key = client.post(
            "/api/admin/servers",
            json=key_body(box, skipChecks=True, hostKeyFingerprint=fake_fingerprint("Q")),
            headers=admin,
        )
        response = client.post(
            "/api/admin/servers", json=key_body(box, skipChecks=True), headers=admin
        )
    finally:
        pool_fleet.remove(box)
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert doc["hostKeyFingerprint"] == fingerprint  # still pinned
    assert doc["checks"]["skipped"] is True
    assert any("skipped" in note for note in doc["checks"]["notes"])
    assert server_count(session) == 1
    assert any(
        r.levelname == "WARNING" and "environment checks skipped" in r.getMessage()
        for r in caplog.records
    )
    # Skipping the checks never skips host key pinning.
    assert wrong_key.status_code == 409 and wrong_key.get_json()["code"] == "host_key_mismatch"


def test_skip_checks_must_be_a_boolean(client, admin, session, key_box):
    response = client.post(
        "/api/admin/servers", json=key_body(key_box, skipChecks="maybe"), headers=admin
    )
    assert response.status_code == 422
    assert "skipChecks" in response.get_json()["errors"]
    assert server_count(session) == 0


def test_the_happy_coder_version_is_read_from_its_package(client, admin, pool_fleet):
    box = pool_fleet.new_box()
    box.path_override = f"{npm_installed_happy(pool_fleet, '0.13.0')}:/usr/local/bin:/usr/bin:/bin"
    box.restart()
    try:
        response = client.post("/api/admin/servers", json=key_body(box), headers=admin)
    finally:
        pool_fleet.remove(box)
    assert response.status_code == 201, response.get_json()
    checks = response.get_json()["checks"]
    assert checks["happyVersion"] == "0.13.0"
    assert checks["happyPath"].endswith("/bin/happy")


def test_supplied_fingerprint_that_does_not_match_is_409_and_nothing_stored(
    client, admin, session, key_box
):
    response = client.post(
        "/api/admin/servers",
        json=key_body(key_box, hostKeyFingerprint=fake_fingerprint("Z")),
        headers=admin,
    )
    assert response.status_code == 409
    assert response.get_json()["code"] == "host_key_mismatch"
    assert server_count(session) == 0
    assert "Accepted" not in key_box.sshd_log()


def test_supplied_fingerprint_that_matches_is_accepted(client, admin, key_box):
    response = client.post(
        "/api/admin/servers",
        json=key_body(key_box, hostKeyFingerprint=key_box.host_key_fingerprint),
        headers=admin,
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["hostKeyFingerprint"] == key_box.host_key_fingerprint


def test_stopped_box_is_a_clear_422(client, admin, session, key_box):
    key_box.stop()
    response = client.post("/api/admin/servers", json=key_body(key_box), headers=admin)
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "server_unreachable"
    assert f"127.0.0.1:{key_box.port}" in body["message"]
    assert server_count(session) == 0


def test_duplicate_is_409(client, admin, key_box):
    assert (
        client.post("/api/admin/servers", json=key_body(key_box), headers=admin).status_code == 201
    )
    response = client.post("/api/admin/servers", json=key_body(key_box), headers=admin)
    assert response.status_code == 409
    assert response.get_json()["code"] == "server_exists"


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"port": 70000}, {"port"}),
        ({"cpuCores": 0}, {"cpuCores"}),
        ({"host": "a b"}, {"host"}),
        ({"password": "pw"}, {"password"}),  # and privateKey: two credentials
        ({"privateKey": "hello"}, {"privateKey"}),
        ({"hostKeyFingerprint": "MD5:aa:bb"}, {"hostKeyFingerprint"}),
        ({"ramGb": "lots"}, {"ramGb"}),
    ],
)
def test_bad_fields_are_422_with_field_errors(client, admin, session, change, fields):
    body = {
        "host": "10.0.0.1",
        "user": "root",
        "privateKey": "-----BEGIN OPENSSH PRIVATE "
        "KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        "cpuCores": 2,
        "ramGb": 4,
        "diskGb": 40,
    }
    body.update(change)
    response = client.post("/api/admin/servers", json=body, headers=admin)
    assert response.status_code == 422
    assert fields <= set(response.get_json()["errors"])
    assert server_count(session) == 0


def test_missing_credential_and_resources_are_422(client, admin):
    response = client.post("/api/admin/servers", json={"host": "h", "user": "u"}, headers=admin)
    assert response.status_code == 422
    assert {"password", "privateKey", "cpuCores", "ramGb", "diskGb"} <= set(
        response.get_json()["errors"]
    )


def test_regular_users_get_403_on_every_route(app, client, session):
    headers = token_for(app, UserFactory())
    server = make_server(session)
    session.commit()
    for method, path in [
        ("get", "/api/admin/servers"),
        ("post", "/api/admin/servers"),
        ("get", f"/api/admin/servers/{server.id}"),
        ("patch", f"/api/admin/servers/{server.id}"),
        ("delete", f"/api/admin/servers/{server.id}"),
    ]:
        response = getattr(client, method)(path, json={}, headers=headers)
        assert response.status_code == 403, (method, path)
        assert response.get_json()["code"] == "admin_required"
    assert client.get("/api/admin/servers").status_code == 401
    assert session.get(Server, server.id) is not None


def test_unknown_ids_are_404(client, admin):
    unknown = uuid.uuid4()
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)(f"/api/admin/servers/{unknown}", json={}, headers=admin)
        assert response.status_code == 404, method
        assert response.get_json()["code"] == "server_not_found"
    assert client.get("/api/admin/servers/not-a-uuid", headers=admin).status_code == 404


def test_list_filters_by_state_and_shows_the_allocated_box(client, admin, session):
    busy = make_server(session, label="busy")
    box = make_box(session)
    pool.allocate_server(session, box)
    make_server(session, state="draining", label="draining")
    session.commit()
    page = client.get("/api/admin/servers", headers=admin).get_json()
    assert page["total"] == 2
    assert {d["label"] for d in page["items"]} == {"busy", "draining"}
    allocated = client.get("/api/admin/servers?state=allocated", headers=admin).get_json()
    assert allocated["total"] == 1
    assert [(d["id"], d["allocatedBoxId"]) for d in allocated["items"]] == [
        (str(busy.id), str(box.id))
    ]
    first = client.get("/api/admin/servers?limit=1", headers=admin).get_json()
    second = client.get("/api/admin/servers?limit=1&offset=1", headers=admin).get_json()
    assert (first["total"], second["total"]) == (2, 2)
    # Two pages of one: each server exactly once (created in one transaction, the same
    # created_at, so their order is by id).
    assert {first["items"][0]["label"], second["items"][0]["label"]} == {"busy", "draining"}
    for bad in ("limit=0", "limit=201", "offset=-1", f"offset={2**63}", "state=a%00b"):
        assert client.get(f"/api/admin/servers?{bad}", headers=admin).status_code == 422, bad
    response = client.get("/api/admin/servers?state=sleeping", headers=admin)
    assert response.status_code == 422
    assert "state" in response.get_json()["errors"]


def test_patch_changes_fields_and_state(client, admin, session):
    server = make_server(session)
    session.commit()
    url = f"/api/admin/servers/{server.id}"
    response = client.patch(
        url,
        json={"label": "new", "region": "ap", "cpuCores": 32, "state": "draining"},
        headers=admin,
    )
    assert response.status_code == 200, response.get_json()
    doc = response.get_json()
    assert (doc["label"], doc["region"], doc["cpuCores"], doc["state"]) == (
        "new",
        "ap",
        32,
        "draining",
    )
    assert client.get(url, headers=admin).get_json()["state"] == "draining"
    response = client.patch(url, json={"state": "allocated"}, headers=admin)
    assert response.status_code == 422
    assert "state" in response.get_json()["errors"]
    response = client.patch(url, json={"credential": "x"}, headers=admin)
    assert response.status_code == 422


def test_patch_cannot_retire_an_allocated_server_but_can_drain_it(client, admin, session):
    server = make_server(session)
    pool.allocate_server(session, make_box(session))
    session.commit()
    url = f"/api/admin/servers/{server.id}"
    response = client.patch(url, json={"state": "retired"}, headers=admin)
    assert response.status_code == 409
    assert response.get_json()["code"] == "server_allocated"
    response = client.patch(url, json={"state": "draining"}, headers=admin)
    assert (response.status_code, response.get_json()["state"]) == (200, "draining")


def test_patch_refuses_cleaning_to_available(client, admin, session):
    server = make_server(session, state="cleaning")
    session.commit()
    response = client.patch(
        f"/api/admin/servers/{server.id}", json={"state": "available"}, headers=admin
    )
    assert response.status_code == 409
    assert response.get_json()["code"] == "invalid_state_transition"


def test_delete_is_refused_while_allocated_then_retires_or_deletes(client, admin, session):
    used = make_server(session)
    box = make_box(session)
    pool.allocate_server(session, box)
    unused = make_server(session)
    session.commit()
    response = client.delete(f"/api/admin/servers/{used.id}", headers=admin)
    assert response.status_code == 409
    assert response.get_json()["code"] == "server_allocated"
    session.execute(update(VibeBox).where(VibeBox.id == box.id).values(status="terminated"))
    session.commit()
    assert client.delete(f"/api/admin/servers/{used.id}", headers=admin).status_code == 204
    assert client.get(f"/api/admin/servers/{used.id}", headers=admin).get_json()["state"] == (
        "retired"
    )
    assert client.delete(f"/api/admin/servers/{unused.id}", headers=admin).status_code == 204
    assert client.get(f"/api/admin/servers/{unused.id}", headers=admin).status_code == 404


def test_servers_are_in_the_openapi_document(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"get", "post"} <= set(paths["/api/admin/servers"])
    assert {"get", "patch", "delete"} <= set(paths["/api/admin/servers/{server_id}"])


@pytest.fixture
def gateway_box(pool_fleet):
    box = pool_fleet.new_box(extra_config=("LogLevel DEBUG1",))
    yield box
    pool_fleet.remove(box)


def test_add_a_server_behind_a_gateway(client, admin, session, key_box, gateway_box):
    gateway = {
        "host": "127.0.0.1",
        "port": gateway_box.port,
        "user": gateway_box.user,
        "privateKey": gateway_box.client_key.private_pem,
        "hostKeyFingerprint": gateway_box.host_key_fingerprint,
    }
    response = client.post(
        "/api/admin/servers", json=key_body(key_box, gateway=gateway), headers=admin
    )

    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert doc["gateway"] == {
        "host": "127.0.0.1",
        "port": gateway_box.port,
        "user": gateway_box.user,
        "authMethod": "key",
        "hostKeyFingerprint": gateway_box.host_key_fingerprint,
    }
    assert doc["hostKeyFingerprint"] == key_box.host_key_fingerprint
    assert "ctype direct-tcpip" in gateway_box.sshd_log()  # admission went through it
    assert "PRIVATE KEY" not in response.get_data(True)


def test_a_gateway_without_its_host_key_is_a_422(client, admin, session, key_box, gateway_box):
    gateway = {
        "host": "127.0.0.1",
        "port": gateway_box.port,
        "user": gateway_box.user,
        "privateKey": gateway_box.client_key.private_pem,
    }
    response = client.post(
        "/api/admin/servers", json=key_body(key_box, gateway=gateway), headers=admin
    )

    assert response.status_code == 422, response.get_json()
    assert "hostKeyFingerprint" in str(response.get_json())
    assert server_count(session) == 0
    assert "Accepted publickey" not in gateway_box.sshd_log()
