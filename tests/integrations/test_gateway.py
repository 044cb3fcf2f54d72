"""Pool servers behind a bastion: two real sshd hops on loopback (gateway box -> target
box). The gateway's sshd logs at DEBUG1, so its log shows the direct-tcpip channel; with
forwarding switched off at the gateway the same target is unreachable for us, which proves
the connection goes through the gateway and not around it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from app.crypto import DecryptionError
from app.errors import HostKeyMismatchError, HostUnreachableError
from app.integrations import fabric_ssh
from app.integrations.ssh import BoxSession, fetch_host_key_fingerprint
from app.services import pool
from tests.support.sshd import BoxFleet, SSHBox

WRONG_KEY = "SHA256:" + "A" * 43


@pytest.fixture
def gateway_box(box_fleet: BoxFleet) -> Iterator[SSHBox]:
    box = box_fleet.new_box(extra_config=("LogLevel DEBUG1",))
    yield box
    box_fleet.remove(box)


def _connections(box: SSHBox) -> int:
    return box.sshd_log().count("Connection from")


def test_box_session_reaches_the_target_through_the_gateway(
    box: SSHBox, gateway_box: SSHBox
) -> None:
    target = box.target(gateway=gateway_box.target())
    assert "direct-tcpip" not in gateway_box.sshd_log()

    with BoxSession(target, connect_timeout=5) as session:
        result = session.run('echo "conn=$SSH_CONNECTION"; whoami')

    assert result.exit_status == 0 and box.user in result.output
    log = gateway_box.sshd_log()
    assert "ctype direct-tcpip" in log
    assert f"port {box.port}" in log  # the channel the gateway opened to the target
    assert "conn=127.0.0.1 " in result.output


def test_without_forwarding_at_the_gateway_the_target_is_not_reached(
    box: SSHBox, gateway_box: SSHBox
) -> None:
    gateway_box.extra_config.append("AllowTcpForwarding no")
    gateway_box.restart()
    before = _connections(box)

    with pytest.raises(HostUnreachableError):
        BoxSession(box.target(gateway=gateway_box.target()), connect_timeout=5).connect()

    assert _connections(box) == before
    with BoxSession(box.target(), connect_timeout=5) as direct:  # the target itself is fine
        assert direct.run("true").exit_status == 0


def test_a_wrong_gateway_host_key_is_refused_before_anything_reaches_the_target(
    box: SSHBox, gateway_box: SSHBox
) -> None:
    before = _connections(box)
    target = box.target(gateway=gateway_box.target(host_key_fingerprint=WRONG_KEY))

    with pytest.raises(HostKeyMismatchError):
        BoxSession(target, connect_timeout=5).connect()
    with pytest.raises(HostKeyMismatchError):
        fabric_ssh.run(fabric_ssh.fabric_connection(target), "true", timeout=10)

    assert "Accepted publickey" not in gateway_box.sshd_log()
    assert _connections(box) == before


def test_a_wrong_target_key_behind_a_good_gateway_is_refused(
    box: SSHBox, gateway_box: SSHBox
) -> None:
    target = box.target(host_key_fingerprint=WRONG_KEY, gateway=gateway_box.target())
    with pytest.raises(HostKeyMismatchError):
        BoxSession(target, connect_timeout=5).connect()
    assert "Accepted publickey" not in box.sshd_log()


def test_fabric_connection_and_host_key_fetch_go_through_the_gateway(
    box: SSHBox, gateway_box: SSHBox
) -> None:
    target = box.target(gateway=gateway_box.target())
    connection = fabric_ssh.fabric_connection(target)
    try:
        result = fabric_ssh.run(connection, "whoami", timeout=10)
    finally:
        connection.close()
    fingerprint = fetch_host_key_fingerprint(
        "127.0.0.1", box.port, timeout=5, gateway=gateway_box.target()
    )

    assert result.exit_status == 0 and result.stdout.strip() == box.user
    assert fingerprint == box.host_key_fingerprint
    assert gateway_box.sshd_log().count("ctype direct-tcpip") >= 2


def test_pool_server_with_a_gateway_stores_it_encrypted_and_connects_through_it(
    session: Any, settings: Any, box: SSHBox, gateway_box: SSHBox
) -> None:
    spec = pool.ServerSpec(
        host="127.0.0.1",
        port=box.port,
        user=box.user,
        private_key=box.client_key.private_pem,
        gateway=pool.GatewaySpec(
            host="127.0.0.1",
            port=gateway_box.port,
            user=gateway_box.user,
            private_key=gateway_box.client_key.private_pem,
            host_key_fingerprint=gateway_box.host_key_fingerprint,
        ),
    )
    server = pool.add_server(session, spec, encryption_key=settings.encryption_key)

    assert server.host_key_fingerprint == box.host_key_fingerprint  # pinned via the gateway
    assert server.gateway_port == gateway_box.port
    assert server.gateway_credential_encrypted is not None
    assert b"PRIVATE KEY" not in server.gateway_credential_encrypted
    target = pool.ssh_target_for(server, settings.encryption_key)
    assert target.gateway is not None and target.gateway.port == gateway_box.port
    tunnels = gateway_box.sshd_log().count("ctype direct-tcpip")
    with BoxSession(target, connect_timeout=5) as ssh:
        assert ssh.run("whoami").output.strip() == box.user
    assert gateway_box.sshd_log().count("ctype direct-tcpip") == tunnels + 1


def test_gateway_credential_is_bound_to_its_server_row(
    session: Any, settings: Any, box: SSHBox, gateway_box: SSHBox
) -> None:
    spec = pool.ServerSpec(
        host="127.0.0.1",
        port=box.port,
        user=box.user,
        private_key=box.client_key.private_pem,
        gateway=pool.GatewaySpec(
            host="127.0.0.1",
            port=gateway_box.port,
            user=gateway_box.user,
            private_key=gateway_box.client_key.private_pem,
            host_key_fingerprint=gateway_box.host_key_fingerprint,
        ),
    )
    server = pool.add_server(session, spec, encryption_key=settings.encryption_key)
    other_row = SimpleNamespace(
        **{c: getattr(server, c) for c in ("gateway_host", "gateway_port", "gateway_user")},
        gateway_auth_method=server.gateway_auth_method,
        gateway_credential_encrypted=server.gateway_credential_encrypted,
        gateway_host_key_fingerprint=server.gateway_host_key_fingerprint,
        id=uuid.uuid4(),
    )
    with pytest.raises(DecryptionError):  # a sealed value copied to another row does not open
        pool.gateway_target_for(other_row, settings.encryption_key)  # type: ignore[arg-type]
