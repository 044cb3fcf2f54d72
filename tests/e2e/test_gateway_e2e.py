"""End to end through a bastion: a box is provisioned on a pool server that the worker
reaches only through an SSH gateway (two real sshd hops), and torn down the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import provision
from tests.support.sshd import BoxAccount, BoxFleet, SSHBox


@pytest.fixture
def gateway_box(box_fleet: BoxFleet) -> Iterator[SSHBox]:
    box = box_fleet.new_box(extra_config=("LogLevel DEBUG1",))
    yield box
    box_fleet.remove(box)


def test_box_on_a_server_behind_a_gateway_runs_and_is_torn_down_through_it(
    app: Any, live: Any, settings: Any, admin: Any, make_user: Any, box: SSHBox, gateway_box: SSHBox
) -> None:
    from app.db import db_session
    from app.services import pool

    session = db_session()
    target, gateway = box.target(), gateway_box.target()
    server = pool.add_server(
        session,
        pool.ServerSpec(
            host=target.host,
            port=target.port,
            user=target.user,
            private_key=target.private_key,
            cpu_cores=2,
            ram_gb=4,
            disk_gb=40,
            gateway=pool.GatewaySpec(
                host=gateway.host,
                port=gateway.port,
                user=gateway.user,
                private_key=gateway.private_key,
                host_key_fingerprint=gateway.host_key_fingerprint or "",
            ),
        ),
        encryption_key=settings.encryption_key,
    )
    session.commit()
    db_session.remove()
    tunnels_before = gateway_box.sshd_log().count("ctype direct-tcpip")
    logins_before = box.sshd_log().count("Accepted publickey")
    user = make_user()

    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"running", "error"})

    assert doc["status"] == "running", doc
    account = BoxAccount.of_box(box_id)
    assert account is not None and account.pids()
    # The worker's SSH went through the gateway: a direct-tcpip channel per connection.
    assert gateway_box.sshd_log().count("ctype direct-tcpip") > tunnels_before

    response = admin.post(f"/api/admin/vibeboxes/{box_id}/terminate")
    assert response.status_code == 202, response.get_data(as_text=True)
    done = user.wait_for(box_id, {"terminated", "error"}, timeout=60)
    assert done["status"] == "terminated", done
    assert not account.exists()
    deadline = time.monotonic() + 30  # cleaned (through the gateway) and back in the pool
    while server_state(server.id) != "available" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_state(server.id) == "available"
    # Every login the worker made on the server rode a tunnel through the gateway (a worker
    # keeps its connection for the box's next step, so there are fewer logins than steps).
    logins = box.sshd_log().count("Accepted publickey") - logins_before
    tunnels = gateway_box.sshd_log().count("ctype direct-tcpip") - tunnels_before
    assert 1 <= logins <= tunnels


def server_state(server_id: Any) -> str:
    from sqlalchemy import select

    from app.db import db_session
    from app.models import Server

    try:
        return str(db_session().scalar(select(Server.state).where(Server.id == server_id)))
    finally:
        db_session.remove()
