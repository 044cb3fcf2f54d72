"""The JSON of the box and order documents, key for key and value for value. The schemas that
render them (app/api/*/schemas.py) dump the models and ``status_document.BoxStatusView``
directly; these pin what the answers were when services built the dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import Order, ProvisioningStep, User, VibeBox
from app.services.boxes import events
from tests.api.test_admin_guard import token_for
from tests.factories import AdminFactory, UserFactory
from tests.pool_fixtures import make_box, make_server

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@pytest.fixture
def box(session) -> VibeBox:
    """A degraded box in error with a timeline of three steps and two events."""
    server = make_server(session)
    box = make_box(
        session,
        status="error",
        user_id=UserFactory().id,
        server_id=server.id,
        step="configure_server",
        attempts=2,
        last_error="configure_server failed",
        next_retry_at=T0 + timedelta(minutes=5),
        region="intl",
        action="restart",
        degraded_since=T0,
        degraded_reason="disk full",
        unix_user="vb-abc",
    )
    box.steps = [
        ProvisioningStep(
            name="create_happy_account",
            position=0,
            state="succeeded",
            attempts=1,
            started_at=T0,
            finished_at=T0 + timedelta(seconds=3),
        ),
        ProvisioningStep(name="allocate_server", position=1, state="skipped"),
        ProvisioningStep(
            name="configure_server",
            position=2,
            state="failed",
            attempts=2,
            started_at=T0,
            last_error="configure_server failed",
        ),
    ]
    events.record(session, box, "stop", "Stopped by you")
    events.record(session, box, "daemon_down", "The daemon is down")
    session.commit()
    session.refresh(box)
    return box


def _owner_document(session, box: VibeBox) -> dict[str, Any]:
    """The document as ``describe_box`` built it (then dumped to JSON)."""
    return {
        "id": str(box.id),
        "status": "error",
        "step": "configure_server",
        "progress": {"done": 2, "total": 5},
        "attempts": 2,
        "lastError": "configure_server failed",
        "nextRetryAt": _iso(box.next_retry_at),
        "planId": "basic",
        "region": "intl",
        "createdAt": _iso(box.created_at),
        "updatedAt": _iso(box.updated_at),
        "action": "restart",
        "timeline": [
            {
                "name": s.name,
                "state": s.state,
                "attempts": s.attempts,
                "startedAt": _iso(s.started_at),
                "finishedAt": _iso(s.finished_at),
                "lastError": s.last_error,
            }
            for s in sorted(box.steps, key=lambda s: s.position)
        ],
        "events": [
            {"at": _iso(e.created_at), "kind": e.kind, "message": e.message}
            for e in events.recent(session, box.id)
        ],
        "degraded": True,
        "degradedSince": _iso(box.degraded_since),
        "degradedReason": "disk full",
        "connectionInfo": None,
    }


def test_the_owners_status_document(app, client, session, box) -> None:
    expected = _owner_document(session, box)  # before an app context ends the session
    headers = token_for(app, session.get(User, box.user_id))
    assert [e["kind"] for e in expected["events"]] == ["stop", "daemon_down"]
    assert [t["name"] for t in expected["timeline"]] == [
        "create_happy_account",
        "allocate_server",
        "configure_server",
    ]
    response = client.get(f"/api/vibeboxes/{expected['id']}", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"vibeBox": expected}
    listed = client.get("/api/vibeboxes", headers=headers).get_json()
    assert listed == {"vibeBoxes": [expected]}


def test_the_admin_document_and_list_row(app, client, session, box) -> None:
    document = _owner_document(session, box)  # before an app context ends the session
    user_id, server_id = str(box.user_id), str(box.server_id)
    admin = token_for(app, AdminFactory())
    detail = client.get(f"/api/admin/vibeboxes/{box.id}", headers=admin).get_json()
    assert detail == {
        "vibeBox": {**document, "userId": user_id, "serverId": server_id, "unixUser": "vb-abc"}
    }
    page = client.get(f"/api/admin/vibeboxes?userId={user_id}", headers=admin).get_json()
    assert page == {
        "items": [
            {
                "id": document["id"],
                "status": "error",
                "step": "configure_server",
                "progress": {"done": 2, "total": 5},
                "attempts": 2,
                "lastError": "configure_server failed",
                "degraded": True,
                "degradedReason": "disk full",
                "planId": "basic",
                "region": "intl",
                "userId": user_id,
                "serverId": server_id,
                "unixUser": "vb-abc",
                "createdAt": document["createdAt"],
                "updatedAt": document["updatedAt"],
            }
        ],
        "total": 1,
    }


@pytest.mark.parametrize("bought", [False, True])
def test_the_order_document(app, client, session, bought) -> None:
    user = UserFactory()
    order = Order(
        user_id=user.id,
        plan_id="basic",
        billing_cycle="monthly",
        provider="dev",
        amount=2900,
        currency="USD",
        status="paid" if bought else "pending",
        paid_at=T0 if bought else None,
        region="intl",
    )
    session.add(order)
    session.flush()
    box = make_box(session, user_id=user.id, order_id=order.id) if bought else None
    session.commit()
    headers = token_for(app, user)
    expected = {
        "id": str(order.id),
        "status": "paid" if bought else "pending",
        "planId": "basic",
        "billingCycle": "monthly",
        "provider": "dev",
        "amount": 2900,
        "currency": "USD",
        "region": "intl",
        "createdAt": _iso(order.created_at),
        "paidAt": _iso(order.paid_at),
        "subscriptionId": None,
        "vibeBoxId": str(box.id) if box is not None else None,
    }
    response = client.get(f"/api/orders/{order.id}", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == expected
