"""The `happy` stand-in's slim daemon (``BoxFleet(slim_daemons=True)``, used by
bench/fleet.py for hundreds of boxes): once running it re-executes itself as a small
single-threaded process, and must still keep the contract the product relies on: the same
live pid in daemon.state.json, the machine registered and "running" on the Happy server,
sessions through the control port, and a graceful stop that reports "shutting-down".

Checked from outside, as root, not through the code under test.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.integrations.box_host import BoxHost, BoxUser, box_gecos
from app.integrations.happy import HappyClient, HappyCredentials
from app.integrations.ssh import BoxSession
from tests.support.happy_double import HappyDouble
from tests.support.sshd import BoxAccount, BoxFleet, remove_product_box_users
from tests.support.waiting import wait_until

pytestmark = pytest.mark.sshd  # its own BoxFleet (not the box fixtures the tiers see)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def slim_fleet(happy_double: HappyDouble) -> Iterator[BoxFleet]:
    with BoxFleet(happy_double.url, slim_daemons=True) as fleet:
        yield fleet


@pytest.fixture
def user_name() -> Iterator[str]:
    name = os.environ["BOX_USER_PREFIX"] + secrets.token_hex(6)
    yield name
    remove_product_box_users(name)


def test_slim_daemon_keeps_the_daemon_contract(
    slim_fleet: BoxFleet,
    happy_double: HappyDouble,
    user_name: str,
    credentials: HappyCredentials,
) -> None:
    box = slim_fleet.new_box()
    client = HappyClient(happy_double.url)

    def machine_status() -> str | None:
        for machine in client.list_machines(credentials.token, credentials.secret):
            if machine.id == machine_id:
                return machine.daemon_status
        return None

    try:
        with BoxSession(box.target()) as session:
            host = BoxHost(session, default_happy_server_url=happy_double.url)
            uid = host.ensure_user(BoxUser(user_name), box_gecos(f"slim-{user_name}", "srv"))
            user = BoxUser(user_name, uid)
            host.write_credentials(user, credentials)
            assert host.start_daemon(user, timeout=30).exit_status == 0
            machine_id = host.read_machine_id(user)
            assert machine_id
            wait_until(lambda: machine_status() == "running")
            live = host.liveness(user)
            assert live.alive and live.pid is not None
            pid = live.pid
            account = BoxAccount.of_box(f"slim-{user_name}")
            assert account is not None

            # Re-executed in place: same pid, slim command line, one thread, the state file
            # still naming it.
            wait_until(lambda: b"--slim" in _cmdline(pid))
            assert "\nThreads:\t1\n" in _status(pid)
            assert Path(f"/proc/{pid}").stat().st_uid == uid
            state = json.loads(account.daemon_state_path.read_text())
            assert state["pid"] == pid
            assert host.liveness(user).alive

            # The control port still starts sessions (what the Happy app asks for).
            request = urllib.request.Request(
                f"http://127.0.0.1:{state['httpPort']}/spawn-session",
                data=json.dumps({"directory": str(account.home)}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                answer = json.load(response)
            assert answer["success"] is True
            session_pid = int(answer["pid"])
            wait_until(lambda: Path(f"/proc/{session_pid}").exists())
            assert Path(f"/proc/{session_pid}").stat().st_uid == uid

            # A graceful stop: reported to the server, state file gone, nothing left.
            host.end_all_processes(user)
            assert machine_status() == "shutting-down"
            assert not account.daemon_state_path.exists()
            assert account.pids() == []
    finally:
        slim_fleet.remove(box)
