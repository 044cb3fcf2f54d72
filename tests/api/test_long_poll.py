"""Watching a box without polling: ``GET /api/vibeboxes/<id>?wait=N``.

In-process (the Flask app on the suite's PostgreSQL and Redis): validation, ownership, the
window running out (304), the per-process cap (429 ``long_poll_busy``), Redis down (answer
at once). Against the web process as shipped (gunicorn with app/gunicorn_config.py, gthread):
a long poll is woken by a transition committed in another process through Redis pub/sub,
while other requests keep being answered.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask_jwt_extended import create_access_token
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.models import Base, User, VibeBox
from app.services import jobs
from app.services.boxes import box_watch, engine
from tests.api.test_admin_guard import token_for
from tests.factories import _TEST_HASH, UserFactory
from tests.pool_fixtures import make_box
from tests.support.api_server import ApiServer

TRUNCATE = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name not in {"plans"})


@pytest.fixture
def owned_box(app, session) -> tuple[dict[str, str], uuid.UUID]:
    user = UserFactory()
    box = make_box(session, status="provisioning", user_id=user.id, step="allocate_server")
    session.commit()  # the request ends its session: the box must outlive that
    return token_for(app, user), box.id


@pytest.fixture
def watcher(app, monkeypatch) -> Iterator[box_watch.BoxWatcher]:
    """This test's own box watcher (the app's is shared by the whole test process)."""
    settings = app.config["VIBEBOX_SETTINGS"]
    own = box_watch.BoxWatcher(settings.redis_url, max_waiters=4, recheck_seconds=0.5)
    monkeypatch.setitem(app.extensions, "vibebox.box_watcher", own)
    yield own
    own.stop()


def _get(client: Any, box_id: uuid.UUID, headers: dict[str, str], query: str = "", **kw: Any):
    return client.get(f"/api/vibeboxes/{box_id}{query}", headers={**headers, **kw})


@pytest.mark.parametrize("wait", ["0", "31", "-1", "soon", "2.5"])
def test_wait_outside_1_to_30_seconds_is_422(client, owned_box, watcher, wait: str) -> None:
    headers, box_id = owned_box
    response = _get(client, box_id, headers, f"?wait={wait}")
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == "validation_error" and "wait" in body["errors"]


def test_another_users_box_is_404_for_a_long_poll(client, app, owned_box, watcher) -> None:
    _, box_id = owned_box
    stranger = token_for(app, UserFactory())
    response = _get(client, box_id, stranger, "?wait=5", **{"If-None-Match": '"x"'})
    assert response.status_code == 404
    assert response.get_json()["code"] == "vibebox_not_found"
    assert watcher.waiting == 0


def test_a_client_with_another_version_gets_the_document_at_once(
    client, owned_box, watcher
) -> None:
    headers, box_id = owned_box
    watcher.max_waiters = 0  # any attempt to wait would be refused with 429
    response = _get(client, box_id, headers, "?wait=30", **{"If-None-Match": '"stale"'})
    assert response.status_code == 200
    assert response.get_json()["vibeBox"]["status"] == "provisioning"
    assert response.headers["ETag"]


def test_an_unchanged_box_answers_304_with_the_same_etag_after_the_window(
    client, owned_box, watcher
) -> None:
    headers, box_id = owned_box
    first = _get(client, box_id, headers)
    etag = first.headers["ETag"]
    response = _get(client, box_id, headers, "?wait=1", **{"If-None-Match": etag})
    assert response.status_code == 304
    assert response.headers["ETag"] == etag
    assert watcher.waiting == 0  # the waiter is gone with its request


def test_long_polls_above_the_per_process_cap_are_429_long_poll_busy(
    client, owned_box, watcher
) -> None:
    headers, box_id = owned_box
    etag = _get(client, box_id, headers).headers["ETag"]
    watcher.max_waiters = 0
    response = _get(client, box_id, headers, "?wait=5", **{"If-None-Match": etag})
    assert response.status_code == 429
    assert response.get_json()["code"] == "long_poll_busy"
    assert int(response.headers["Retry-After"]) >= 1
    # A plain poll is still answered.
    assert _get(client, box_id, headers, **{"If-None-Match": etag}).status_code == 304


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_down_answers_at_once_instead_of_waiting(app, client, owned_box, monkeypatch) -> None:
    headers, box_id = owned_box
    down = box_watch.BoxWatcher(
        f"redis://127.0.0.1:{_closed_port()}/0", max_waiters=0, recheck_seconds=0.5
    )
    monkeypatch.setitem(app.extensions, "vibebox.box_watcher", down)
    try:
        etag = _get(client, box_id, headers).headers["ETag"]
        # max_waiters=0: had it tried to wait, this would be 429; unsubscribed, it answers.
        response = _get(client, box_id, headers, "?wait=30", **{"If-None-Match": etag})
        assert response.status_code == 304
        assert not down.subscribed.is_set()
    finally:
        down.stop()


def test_every_poll_waits_for_a_watcher_that_is_still_connecting(monkeypatch) -> None:
    """Not only the poll that started the listener: a second one arriving while it connects
    waits too, instead of being answered at once as in a Redis outage."""
    watcher = box_watch.BoxWatcher("redis://127.0.0.1:1/0", max_waiters=4, recheck_seconds=0.5)
    watcher.connect_wait_seconds = 60  # no race with the clock on a loaded machine
    connect = threading.Event()

    def slow_listen() -> None:  # subscribes only once the test lets it
        connect.wait(10)
        watcher.subscribed.set()
        watcher._connected_once.set()

    monkeypatch.setattr(watcher, "_listen", slow_listen)
    results: list[object] = []

    def poll() -> None:
        results.append(watcher.wait_for_change("box", lambda: "new", lambda v: v == "old", 60))

    first = threading.Thread(target=poll)
    first.start()
    time.sleep(0.05)  # the first poll started the listener; the second finds it connecting
    second = threading.Thread(target=poll)
    second.start()
    time.sleep(0.05)
    assert results == []  # both wait for the subscription instead of answering "no change"
    connect.set()
    first.join(10)
    second.join(10)
    assert results == ["new", "new"]


def test_a_flush_notes_the_box_of_changed_steps_and_events(session, owned_box) -> None:
    from app.services.boxes import events

    _, box_id = owned_box
    box = session.get(VibeBox, box_id)
    events.record(session, box, "note", "something happened")
    session.flush()
    assert box_watch.changed_boxes(session) == {str(box_id)}
    session.rollback()
    assert box_watch.changed_boxes(session) == set()


# --------------------------------------------------------------------------- as shipped


@pytest.fixture
def committed(migrated_engine: Engine) -> Iterator[Engine]:
    """The API process commits for real: leave the test database as we found it."""
    yield migrated_engine
    with migrated_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TRUNCATE} CASCADE"))


@pytest.fixture
def shipped_api(committed: Engine, tmp_path) -> Iterator[ApiServer]:
    """One gunicorn worker with the shipped config: gthread, 4 threads, one long poll at a
    time, and a re-check later than the wait (only a pub/sub notice can end it early)."""
    env = {
        "WEB_THREADS": "4",
        "WEB_MAX_WAITERS": "1",
        "LONG_POLL_RECHECK_SECONDS": "60",
        "VIBEBOX_ENV": "testing",
    }
    with ApiServer(tmp_path, env, args=("-c", "python:app.gunicorn_config")) as server:
        yield server


def test_a_long_poll_wakes_when_another_process_commits_a_transition(
    app, committed: Engine, shipped_api: ApiServer
) -> None:
    api = shipped_api
    with Session(committed) as s:
        user = User(
            username=f"lp{uuid.uuid4().hex[:10]}",
            email=f"lp{uuid.uuid4().hex[:10]}@example.com",
            password_hash=_TEST_HASH,
            auth_provider="local",
        )
        s.add(user)
        s.flush()
        box = VibeBox(user_id=user.id, plan_id="basic", status="running")
        s.add(box)
        s.commit()
        box_id, user_id = box.id, user.id
        with app.app_context():
            headers = {"Authorization": f"Bearer {create_access_token(identity=user)}"}
    path = f"/api/vibeboxes/{box_id}"
    first = api.request("GET", path, headers=headers)
    assert first.status_code == 200, first.text
    etag = first.headers["ETag"]
    assert first.json()["vibeBox"]["status"] == "running"

    answers: list[tuple[requests.Response, float]] = []
    failures: list[BaseException] = []

    def long_poll() -> None:
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                asked = time.monotonic()
                try:
                    response = api.request(
                        "GET",
                        f"{path}?wait=30",
                        headers={**headers, "If-None-Match": etag},
                        timeout=60,
                    )
                except requests.ConnectionError:
                    # a keep-alive connection the server closed meanwhile: ask again
                    time.sleep(0.2)
                    continue
                if response.status_code not in (304, 429):
                    answers.append((response, time.monotonic() - asked))
                    return
                # 429: the probe below held the only slot; 304: nothing changed (or the
                # process's change watcher was not subscribed yet and answered at once, as
                # it does while Redis is down): ask again, as a client's long-poll loop does
                time.sleep(0.2)
        except BaseException as exc:
            failures.append(exc)

    poller = threading.Thread(target=long_poll)
    poller.start()
    try:
        # The waiter is registered once a second long poll is refused (one slot).
        deadline = time.monotonic() + 60
        while True:
            probe = api.request("GET", f"{path}?wait=1", headers={**headers, "If-None-Match": etag})
            if probe.status_code == 429:
                assert probe.json()["code"] == "long_poll_busy"
                break
            assert probe.status_code == 304, probe.text
            assert not failures, f"the long poll failed: {failures[0]!r}"
            assert not answers, f"the long poll answered without waiting: {answers[0][0]}"
            assert time.monotonic() < deadline, "the long poll never started waiting"
            # The probe itself held the only slot for its second: leave the poller (which
            # asks again 0.2 s after a 429) room to take it before probing again.
            time.sleep(0.5)
        # While it waits, the same single process answers other requests.
        assert api.request("GET", "/healthz").status_code == 200
        plain = api.request("GET", path, headers={**headers, "If-None-Match": etag})
        assert plain.status_code == 304

        # A transition committed here (another process than the API), published after
        # commit through Redis pub/sub.
        collected: list[object] = []
        jobs.set_publisher(collected.append)  # no worker here: keep the job off the broker
        try:
            with Session(committed) as s:
                engine.request_action(s, box_id, owner_id=user_id, action="stop")
                s.commit()
        finally:
            jobs.set_publisher(None)
        assert collected  # the control step would have been sent
    finally:
        poller.join(timeout=90)
    assert answers, "the long poll did not answer"
    woken, took = answers[0]
    assert woken.status_code == 200, woken.text
    assert woken.json()["vibeBox"]["status"] == "stopping"
    assert woken.headers["ETag"] != etag
    # Woken by the notice, not by the end of its 30 s window (the re-check is 60 s).
    assert took < 30
