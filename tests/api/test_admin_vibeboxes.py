"""Admin box list and detail: real PostgreSQL, boxes driven by the real engine."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from app.services.boxes import events
from tests.api.test_admin_guard import token_for
from tests.factories import AdminFactory, UserFactory
from tests.pool_fixtures import make_box, make_server
from tests.services.engine_harness import PERMANENT, Harness

SUMMARY_FIELDS = {
    "id",
    "status",
    "step",
    "progress",
    "attempts",
    "lastError",
    "degraded",
    "degradedReason",
    "planId",
    "region",
    "userId",
    "serverId",
    "unixUser",
    "createdAt",
    "updatedAt",
}


@pytest.fixture
def admin(app):
    return token_for(app, AdminFactory())


@pytest.fixture
def harness(session, settings):
    h = Harness(session, settings)
    yield h
    h.close()


@pytest.fixture
def fleet(session):
    """Four boxes: running+degraded on a server (pro), waiting, error, running (basic)."""
    server = make_server(session, state="allocated")
    owner = UserFactory()
    degraded = make_box(
        session,
        plan_id="pro",
        status="running",
        user_id=owner.id,
        server_id=server.id,
        unix_user="vb_deg",
        degraded_since=datetime.now(UTC),
        degraded_reason="The Happy daemon is down.",
    )
    waiting = make_box(session, status="waiting_for_capacity", user_id=owner.id)
    failed = make_box(session, status="error", last_error="create_happy_account cannot work.")
    running = make_box(session, status="running")
    session.commit()
    return {
        "server": server,
        "owner": owner,
        "degraded": degraded,
        "waiting": waiting,
        "error": failed,
        "running": running,
    }


def ids(page):
    return {item["id"] for item in page["items"]}


def get_page(client, admin, query=""):
    response = client.get(f"/api/admin/vibeboxes{query}", headers=admin)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_list_is_an_items_total_envelope_of_operator_rows(client, admin, fleet):
    page = get_page(client, admin)
    assert set(page) == {"items", "total"}
    assert page["total"] == 4
    assert ids(page) == {str(fleet[k].id) for k in ("degraded", "waiting", "error", "running")}
    row = next(i for i in page["items"] if i["id"] == str(fleet["degraded"].id))
    assert set(row) == SUMMARY_FIELDS
    assert (row["serverId"], row["unixUser"], row["userId"], row["degraded"]) == (
        str(fleet["server"].id),
        "vb_deg",
        str(fleet["owner"].id),
        True,
    )
    assert row["degradedReason"] == "The Happy daemon is down."


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?status=error", {"error"}),
        ("?status=running", {"degraded", "running"}),
        ("?degraded=true", {"degraded"}),
        ("?degraded=false", {"waiting", "error", "running"}),
        ("?waiting=true", {"waiting"}),
        ("?waiting=false", {"degraded", "error", "running"}),
        ("?planId=pro", {"degraded"}),
        ("?status=running&degraded=false", {"running"}),
    ],
)
def test_filters(client, admin, fleet, query, expected):
    page = get_page(client, admin, query)
    assert ids(page) == {str(fleet[k].id) for k in expected}
    assert page["total"] == len(expected)


def test_filters_by_user_and_server(client, admin, fleet):
    by_user = get_page(client, admin, f"?userId={fleet['owner'].id}")
    assert ids(by_user) == {str(fleet["degraded"].id), str(fleet["waiting"].id)}
    by_server = get_page(client, admin, f"?serverId={fleet['server'].id}")
    assert ids(by_server) == {str(fleet["degraded"].id)}
    assert get_page(client, admin, f"?userId={uuid.uuid4()}") == {"items": [], "total": 0}


def test_pagination_walks_every_box_once_newest_first(client, admin, fleet):
    seen = []
    for offset in range(0, 5, 2):
        page = get_page(client, admin, f"?limit=2&offset={offset}")
        assert page["total"] == 4
        assert len(page["items"]) == min(2, 4 - offset)
        seen += [item["createdAt"] for item in page["items"]]
    assert len(seen) == 4 and seen == sorted(seen, reverse=True)
    everything = ids(get_page(client, admin, "?limit=200"))
    walked = ids(get_page(client, admin, "?limit=3")) | ids(
        get_page(client, admin, "?limit=3&offset=3")
    )
    assert walked == everything


@pytest.mark.parametrize(
    "query",
    [
        "?status=sleeping",
        "?degraded=maybe",
        "?waiting=2x",
        "?userId=not-a-uuid",
        "?serverId=1",
        "?planId=",
        "?planId=a%00b",
        "?status=run%00ning",
        "?limit=0",
        "?limit=201",
        f"?limit={2**64}",
        "?offset=-1",
        f"?offset={2**31}",
        "?color=blue",
    ],
)
def test_bad_filters_are_422(client, admin, query):
    response = client.get(f"/api/admin/vibeboxes{query}", headers=admin)
    assert response.status_code == 422, query
    assert response.get_json()["code"] == "validation_error"


def test_detail_is_the_full_document_with_operator_fields(client, admin, session, harness):
    harness.add_server()
    harness.world.script["configure_server"] = [PERMANENT]
    box = harness.drive(harness.pay().id)
    assert box.status == "error"
    events.record(session, box, "note", "An operator looked at it.")
    session.commit()
    response = client.get(f"/api/admin/vibeboxes/{box.id}", headers=admin)
    assert response.status_code == 200
    doc = response.get_json()["vibeBox"]
    # A permanent failure while configuring gives the server back: no server any more.
    assert (doc["status"], doc["userId"], doc["serverId"]) == ("error", str(box.user_id), None)
    assert doc["connectionInfo"] is None
    assert doc["lastError"] == "configure_server cannot work."
    timeline = {t["name"]: t["state"] for t in doc["timeline"]}
    assert timeline["configure_server"] == "failed"
    assert timeline["allocate_server"] == "succeeded"
    assert "An operator looked at it." in [e["message"] for e in doc["events"]]


def test_detail_of_a_degraded_box_names_its_server_and_unix_user(client, admin, fleet):
    response = client.get(f"/api/admin/vibeboxes/{fleet['degraded'].id}", headers=admin)
    doc = response.get_json()["vibeBox"]
    assert (doc["serverId"], doc["unixUser"], doc["userId"]) == (
        str(fleet["server"].id),
        "vb_deg",
        str(fleet["owner"].id),
    )
    assert (doc["degraded"], doc["degradedReason"]) == (True, "The Happy daemon is down.")
    assert doc["connectionInfo"] is None  # the owner's Happy credentials stay the owner's


def test_unknown_box_is_404(client, admin):
    response = client.get(f"/api/admin/vibeboxes/{uuid.uuid4()}", headers=admin)
    assert response.status_code == 404
    assert response.get_json()["code"] == "vibebox_not_found"
    assert client.get("/api/admin/vibeboxes/not-a-uuid", headers=admin).status_code == 404


def test_regular_users_get_403_and_anonymous_401(app, client, fleet):
    user = token_for(app, UserFactory())
    for path in ("/api/admin/vibeboxes", f"/api/admin/vibeboxes/{fleet['error'].id}"):
        response = client.get(path, headers=user)
        assert response.status_code == 403, path
        assert response.get_json()["code"] == "admin_required"
        assert client.get(path).status_code == 401
