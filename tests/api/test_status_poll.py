"""The status poll's cost and its ETag: a 304 is one small query, no user SELECT; the ETag
moves with every part of the document (box, steps, events); logout still ends access.
And the pool's liveness policy: an idle pooled connection that died is replaced."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection

from app import db as app_db
from app.models import ProvisioningStep
from app.services.boxes import events
from tests.api.test_admin_guard import token_for
from tests.factories import UserFactory
from tests.pool_fixtures import make_box


@pytest.fixture
def owned_box(app, session) -> tuple[dict[str, str], uuid.UUID]:
    user = UserFactory()
    box = make_box(session, status="provisioning", user_id=user.id, step="allocate_server")
    box.steps = [
        ProvisioningStep(name="create_happy_account", position=0, state="succeeded"),
        ProvisioningStep(name="allocate_server", position=1, state="running"),
    ]
    session.commit()
    return token_for(app, user), box.id


@pytest.fixture
def statements(db: Connection) -> Iterator[list[str]]:
    """The SQL the app runs on the test's connection (savepoint bookkeeping left out)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            seen.append(statement)

    event.listen(db, "before_cursor_execute", note)
    yield seen
    event.remove(db, "before_cursor_execute", note)


def _poll(client: Any, box_id: uuid.UUID, headers: dict[str, str], **extra: str) -> Any:
    return client.get(f"/api/vibeboxes/{box_id}", headers={**headers, **extra})


def test_not_modified_poll_runs_one_query_and_no_user_select(client, owned_box, statements) -> None:
    headers, box_id = owned_box
    first = _poll(client, box_id, headers)
    assert first.status_code == 200
    assert not [s for s in statements if "FROM users" in s]
    statements.clear()

    again = _poll(client, box_id, headers, **{"If-None-Match": first.headers["ETag"]})

    assert again.status_code == 304
    assert again.headers["ETag"] == first.headers["ETag"]
    assert len(statements) == 1, statements
    assert "FROM vibeboxes" in statements[0]


def test_document_reads_box_and_steps_in_one_query(client, owned_box, statements) -> None:
    headers, box_id = owned_box
    response = _poll(client, box_id, headers)
    assert [s["name"] for s in response.get_json()["vibeBox"]["timeline"]] == [
        "create_happy_account",
        "allocate_server",
    ]
    assert not [s for s in statements if s.lstrip().startswith("SELECT provisioning_steps.")]
    assert [s for s in statements if "LEFT OUTER JOIN provisioning_steps" in s]


def test_etag_moves_when_only_a_step_changes(client, session, owned_box) -> None:
    headers, box_id = owned_box
    etag = _poll(client, box_id, headers).headers["ETag"]
    session.execute(
        text("UPDATE provisioning_steps SET attempts = attempts + 1 WHERE vibebox_id = :id"),
        {"id": box_id},
    )
    session.commit()

    response = _poll(client, box_id, headers, **{"If-None-Match": etag})

    assert response.status_code == 200
    assert response.headers["ETag"] != etag


def test_etag_moves_when_an_event_is_recorded(client, session, owned_box) -> None:
    from app.models import VibeBox

    headers, box_id = owned_box
    etag = _poll(client, box_id, headers).headers["ETag"]
    events.record(session, session.get(VibeBox, box_id), "daemon_down", "The daemon stopped")
    session.commit()

    response = _poll(client, box_id, headers, **{"If-None-Match": etag})

    assert response.status_code == 200
    assert [e["kind"] for e in response.get_json()["vibeBox"]["events"]] == ["daemon_down"]


def test_another_users_box_is_404_before_any_document(app, client, owned_box) -> None:
    _headers, box_id = owned_box
    response = _poll(client, box_id, token_for(app, UserFactory()))
    assert response.status_code == 404


def test_another_user_cannot_read_a_rendered_document(app, client, owned_box) -> None:
    headers, box_id = owned_box
    assert _poll(client, box_id, headers).status_code == 200  # rendered and kept

    response = _poll(client, box_id, token_for(app, UserFactory()))

    assert response.status_code == 404
    assert response.get_json()["code"] == "vibebox_not_found"


def test_unchanged_box_is_answered_from_its_rendered_document(client, owned_box, statements):
    headers, box_id = owned_box
    first = _poll(client, box_id, headers)
    statements.clear()

    again = _poll(client, box_id, headers)

    assert again.status_code == 200
    assert again.get_data() == first.get_data()
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Cache-Control"] == "private, no-cache"
    assert len(statements) == 1, statements  # the version, no document query
    assert "FROM vibeboxes" in statements[0]


def test_rendered_document_follows_every_change_of_the_box(client, session, owned_box) -> None:
    from app.models import VibeBox

    headers, box_id = owned_box
    before = _poll(client, box_id, headers)
    assert before.get_json()["vibeBox"]["events"] == []
    box = session.get(VibeBox, box_id)
    events.record(session, box, "daemon_down", "The daemon stopped")
    session.commit()

    with_event = _poll(client, box_id, headers)
    assert [e["kind"] for e in with_event.get_json()["vibeBox"]["events"]] == ["daemon_down"]
    assert with_event.headers["ETag"] != before.headers["ETag"]

    box = session.get(VibeBox, box_id)  # the poll ended the request's session
    box.status, box.last_error = "error", "allocate_server failed"
    session.commit()

    failed = _poll(client, box_id, headers).get_json()["vibeBox"]
    assert (failed["status"], failed["lastError"]) == ("error", "allocate_server failed")


def test_logged_out_token_cannot_poll(client, session) -> None:
    from app.models import User
    from tests.api.test_auth import register

    assert register(client).status_code == 201
    login = client.post("/api/auth/login", json={"username": "ada", "password": "s3cret-pass!"})
    headers = {"Authorization": f"Bearer {login.get_json()['session']['token']}"}
    user = session.query(User).filter_by(username="ada").one()
    box = make_box(session, status="provisioning", user_id=user.id, step="allocate_server")
    session.commit()
    assert _poll(client, box.id, headers).status_code == 200
    assert _poll(client, box.id, headers).status_code == 200  # the rendered document now

    assert client.post("/api/auth/logout", headers=headers).status_code == 200

    refused = _poll(client, box.id, headers)
    assert refused.status_code == 401
    assert refused.get_json()["code"] == "token_revoked"


def test_autocommit_reads_send_no_begin_and_leave_the_pool_transactional(settings) -> None:
    from psycopg.pq import TransactionStatus
    from sqlalchemy.orm import Session

    engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        with Session(engine) as session:
            app_db.autocommit_reads(session)
            assert session.execute(text("SELECT 1")).scalar_one() == 1
            dbapi = session.connection().connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.info.transaction_status == TransactionStatus.IDLE  # no BEGIN sent
        with engine.connect() as conn:  # the same pooled connection, transactional again
            conn.execute(text("SELECT 1"))
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.info.transaction_status == TransactionStatus.INTRANS
    finally:
        engine.dispose()


def test_idle_pooled_connection_that_died_is_replaced(settings, monkeypatch) -> None:
    monkeypatch.setattr(app_db, "LIVENESS_IDLE_SECONDS", -1.0)  # every reuse counts as idle
    engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
    app_db.install_idle_liveness_check(engine)
    try:
        with engine.connect() as conn:
            first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = create_engine(settings.database_url)
        with admin.connect() as other:  # the backend of the (idle, pooled) connection dies
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
        admin.dispose()

        with engine.connect() as conn:  # no error: the ping found it dead, a new one serves
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_pid
    finally:
        engine.dispose()
