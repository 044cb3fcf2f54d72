"""Paid order -> running VibeBox, through the API, a real worker and real sshd boxes."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from pathlib import Path

from sqlalchemy import func, select

from app.db import db_session
from app.integrations.happy import HappyClient
from app.models import HappyAccount, Server, VibeBox
from tests.e2e.conftest import provision
from tests.support.sshd import BoxAccount
from tests.support.worker import paused


def _server_of(box_id: str) -> Server:
    session = db_session()
    box = session.get(VibeBox, uuid.UUID(box_id))
    assert box is not None and box.server_id is not None
    server = session.get(Server, box.server_id)
    db_session.remove()
    return server


def test_provision_to_running_with_honest_credentials(
    admin, make_user, add_to_pool, box, happy_double, celery_worker
):
    add_to_pool(box)
    user = make_user()
    # Only the worker may log in meanwhile: a beat of this session (health sweeps, the
    # reconciler re-sending a step that looks stuck on a loaded machine) would add logins.
    with paused(celery_worker):
        logins_before = box.sshd_log().count("Accepted publickey")
        box_id = provision(admin, user)
        doc = user.wait_for(box_id, {"running", "error"})
        assert doc["status"] == "running", doc
        # configure_server and start_daemon shared one SSH connection.
        assert box.sshd_log().count("Accepted publickey") - logins_before == 1
    assert doc["progress"] == {"done": 5, "total": 5}
    assert [s["state"] for s in doc["timeline"]] == ["succeeded"] * 5
    assert all(s["startedAt"] and s["finishedAt"] for s in doc["timeline"])
    assert doc["lastError"] is None

    # The box runs as its own unprivileged Unix user, not as the pool login.
    account = BoxAccount.of_box(box_id)
    assert account is not None and account.name != box.user and account.uid != 0
    assert stat.S_IMODE(account.home.stat().st_mode) == 0o700
    assert not (box.home / ".happy").exists()
    # access.key: 0600 in a 0700 dir, owned by the box user, parses as the CLI requires.
    assert stat.S_IMODE(account.happy_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(account.access_key_path.stat().st_mode) == 0o600
    assert account.access_key_path.stat().st_uid == account.uid
    daemon_pid = json.loads(account.daemon_state_path.read_text())["pid"]
    assert Path(f"/proc/{daemon_pid}").stat().st_uid == account.uid
    # The box user cannot read the operator's home nor use sudo.
    assert account.run(f"ls {box.home}").returncode != 0
    assert account.run("sudo -n true").returncode != 0
    key = json.loads(account.access_key_path.read_text())
    assert set(key) == {"secret", "token"}
    assert len(base64.b64decode(key["secret"], validate=True)) == 32
    # ...and its token lists this machine as running on the Happy double.
    secret = base64.b64decode(key["secret"])
    machines = HappyClient(happy_double.url).list_machines(key["token"], secret)
    assert [m.daemon_status for m in machines] == ["running"], machines

    # Connect URL: only when running, carries the same credentials.
    info = doc["connectionInfo"]
    assert "sshCommand" not in info  # the pool login is the operator's channel only
    connect = user.post(f"/api/vibeboxes/{box_id}/connect")
    assert connect.status_code == 200
    assert connect.headers["Cache-Control"] == "no-store"
    url = connect.get_json()["happyWebUrl"]
    assert "embedded=true" in url and f"token={key['token']}" in url


def test_other_users_see_404_and_pollers_get_304(admin, make_user, add_to_pool, box):
    add_to_pool(box)
    owner, stranger = make_user(), make_user()
    box_id = provision(admin, owner)
    owner.wait_for(box_id, {"running"})

    assert stranger.get(f"/api/vibeboxes/{box_id}").status_code == 404
    assert stranger.post(f"/api/vibeboxes/{box_id}/connect").status_code == 404
    assert stranger.get("/api/vibeboxes").get_json() == {"vibeBoxes": []}

    first = owner.get(f"/api/vibeboxes/{box_id}")
    etag = first.headers["ETag"]
    again = owner.get(f"/api/vibeboxes/{box_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    listing = owner.get("/api/vibeboxes").get_json()["vibeBoxes"]
    assert [b["id"] for b in listing] == [box_id]


def test_connect_is_409_until_running(admin, make_user):
    user = make_user()
    box_id = provision(admin, user)  # no server in the pool: it waits
    doc = user.wait_for(box_id, {"waiting_for_capacity"})
    assert doc["connectionInfo"] is None
    response = user.post(f"/api/vibeboxes/{box_id}/connect")
    assert response.status_code == 409
    assert response.get_json()["code"] == "vibebox_not_running"
    assert response.get_json()["status"] == "waiting_for_capacity"


def test_three_boxes_two_servers_third_waits_then_runs(admin, make_user, add_to_pool, box_fleet):
    servers = [box_fleet.new_box() for _ in range(3)]
    try:
        add_to_pool(*servers[:2])
        users = [make_user() for _ in range(3)]
        ids = [provision(admin, u) for u in users]
        docs = [
            u.wait_for(i, {"running", "waiting_for_capacity"})
            for u, i in zip(users, ids, strict=True)
        ]
        waiting = [
            i for i, d in zip(ids, docs, strict=True) if d["status"] == "waiting_for_capacity"
        ]
        for u, i in zip(users, ids, strict=True):
            if i not in waiting:
                u.wait_for(i, {"running"})
        # Exactly one waits (the order is up to the worker), with a readable reason.
        statuses = sorted(u.box(i)["status"] for u, i in zip(users, ids, strict=True))
        assert statuses == ["running", "running", "waiting_for_capacity"]
        waiter = next(u for u, i in zip(users, ids, strict=True) if u.box(i)["status"] != "running")
        waiter_id = ids[users.index(waiter)]
        reason = waiter.box(waiter_id)["lastError"]
        assert reason.startswith("All 2 server(s) that fit the basic plan") and "busy" in reason

        add_to_pool(servers[2])  # wakes the waiting box at once
        assert waiter.wait_for(waiter_id, {"running"})["status"] == "running"
        assert len({_server_of(i).id for i in ids}) == 3
    finally:
        for s in servers:
            box_fleet.remove(s)


def _failed_task_for(box_id: str) -> bool:
    """A FAILURE in the result backend whose exception names this box."""
    from app.config import Settings
    from app.extensions import get_redis

    redis = get_redis(Settings.from_env().redis_url)
    for key in redis.scan_iter("celery-task-meta-*"):
        meta = json.loads(redis.get(key) or b"{}")
        if meta.get("status") == "FAILURE" and box_id in str(meta.get("result")):
            return meta["result"].get("exc_type") == "BoxFailedError"
    return False


def test_happy_503_for_a_while_is_retried_then_runs(
    admin, make_user, add_to_pool, box, happy_double
):
    add_to_pool(box)
    happy_double.fail_next(2, status=503, path="/v1/auth")
    user = make_user()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"running", "error"})
    assert doc["status"] == "running", doc
    assert doc["timeline"][0]["attempts"] == 3


def test_happy_401_fails_fast_with_a_reason_and_admin_retry_resumes(
    admin, make_user, add_to_pool, box, happy_double, celery_worker
):
    add_to_pool(box)
    happy_double.reject_auth = True
    user = make_user()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"error", "running"})
    happy_double.reject_auth = False
    assert doc["status"] == "error"
    assert doc["timeline"][0]["state"] == "failed"
    assert doc["timeline"][0]["attempts"] == 1  # permanent: no retries
    assert doc["lastError"]
    assert "401" not in doc["lastError"] and "token" not in doc["lastError"].lower()
    # The failing task ended as FAILURE (Flower's "Failed"), not as a green SUCCESS: Celery
    # logs a task that raised as "raised unexpected" (a SUCCESS would log "succeeded").
    failure = f"raised unexpected: BoxFailedError('box {box_id} failed at create_happy_account"
    assert failure in celery_worker.tail(2000)

    # Not an admin: 403. Not failed: 409.
    assert user.post(f"/api/admin/vibeboxes/{box_id}/retry").status_code == 403
    retried = admin.post(f"/api/admin/vibeboxes/{box_id}/retry")
    assert retried.status_code == 202
    doc = user.wait_for(box_id, {"running", "error"})
    assert doc["status"] == "running", doc
    assert admin.post(f"/api/admin/vibeboxes/{box_id}/retry").status_code == 409


def test_server_with_stopped_sshd_is_quarantined_and_box_runs_elsewhere(
    admin, make_user, add_to_pool, box_fleet
):
    dead, healthy = box_fleet.new_box(), box_fleet.new_box()
    try:
        # The dead one is the smaller fit, so allocation picks it first.
        add_to_pool(dead, cpu=2, ram_gb=4, disk_gb=40)
        add_to_pool(healthy, cpu=4, ram_gb=8, disk_gb=80)
        dead.stop()
        user = make_user()
        box_id = provision(admin, user)
        doc = user.wait_for(box_id, {"running", "error"})
        assert doc["status"] == "running", doc
        assert _server_of(box_id).ssh_port == healthy.port
        session = db_session()
        states = {s.ssh_port: s.state for s in session.scalars(select(Server))}
        db_session.remove()
        assert states[dead.port] == "unhealthy"
        assert states[healthy.port] == "allocated"
    finally:
        box_fleet.remove(dead)
        box_fleet.remove(healthy)


def test_changed_host_key_is_refused_and_never_written_to(admin, make_user, add_to_pool, box_fleet):
    impostor = box_fleet.new_box()
    try:
        add_to_pool(impostor)
        impostor.regenerate_host_key()
        user = make_user()
        box_id = provision(admin, user)
        doc = user.wait_for(box_id, {"waiting_for_capacity", "error", "running"})
        assert doc["status"] != "running"
        assert BoxAccount.of_box(box_id) is None  # no user was ever created for it
        session = db_session()
        server = session.scalars(select(Server)).one()
        db_session.remove()
        assert server.state == "unhealthy"
        assert "host key" in (server.last_error or "")
    finally:
        box_fleet.remove(impostor)


def test_one_happy_account_per_user_across_boxes(admin, make_user, add_to_pool, box_fleet):
    servers = [box_fleet.new_box() for _ in range(2)]
    try:
        add_to_pool(*servers)
        user = make_user()
        ids = [provision(admin, user) for _ in range(2)]
        for i in ids:
            assert user.wait_for(i, {"running", "error"})["status"] == "running"
        session = db_session()
        accounts = session.scalar(
            select(func.count())
            .select_from(HappyAccount)
            .where(HappyAccount.user_id == user.user_id)
        )
        db_session.remove()
        assert accounts == 1
        accounts = [BoxAccount.of_box(i) for i in ids]
        keys = {json.loads(a.access_key_path.read_text())["secret"] for a in accounts if a}
        assert len(keys) == 1 and len({a.name for a in accounts if a}) == 2
    finally:
        for s in servers:
            box_fleet.remove(s)


def test_provision_validates_input(admin, make_user):
    user = make_user()
    bad = admin.post("/api/admin/provision", json={"userId": "nope", "planId": "basic"})
    assert bad.status_code == 422 and "userId" in bad.get_json()["errors"]
    unknown_plan = admin.post(
        "/api/admin/provision", json={"userId": str(user.user_id), "planId": "gold"}
    )
    assert unknown_plan.status_code == 404
    assert unknown_plan.get_json()["code"] == "plan_not_found"
    unknown_user = admin.post(
        "/api/admin/provision", json={"userId": str(uuid.uuid4()), "planId": "basic"}
    )
    assert unknown_user.get_json()["code"] == "user_not_found"
