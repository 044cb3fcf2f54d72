"""BoxSession against real sshd boxes running the `happy` stand-in and the Happy double."""

from __future__ import annotations

import base64
import json
import re
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.errors import (
    HostKeyMismatchError,
    HostUnreachableError,
    PermanentError,
    SSHAuthError,
    TransientError,
)
from app.integrations.happy import HappyClient, HappyCredentials, HappyMachine
from app.integrations.ssh import BoxSession, SSHTarget, fetch_host_key_fingerprint
from tests.support.happy_double import HappyDouble, make_secret
from tests.support.sshd import BoxFleet, ClientKey, SSHBox

STANDARD_PADDED_BASE64 = re.compile(
    r"^([0-9a-zA-Z+/]{4})*(([0-9a-zA-Z+/]{2}==)|([0-9a-zA-Z+/]{3}=))?$"
)


def _wait_for(predicate: Callable[[], HappyMachine | None], timeout: float = 10.0) -> HappyMachine:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _machine_with_status(
    client: HappyClient, creds: HappyCredentials, machine_id: str, status: str
) -> Callable[[], HappyMachine | None]:
    def check() -> HappyMachine | None:
        for machine in client.list_machines(creds.token, creds.secret):
            if machine.id == machine_id and machine.daemon_status == status:
                return machine
        return None

    return check


def _write_raw_access_key(box: SSHBox, content: str) -> None:
    with BoxSession(box.target()) as session:
        result = session.run(
            'mkdir -p -m 700 "$HOME/.happy" && cat > "$HOME/.happy/access.key"',
            stdin=content.encode(),
        )
    assert result.exit_status == 0, result.output


# --- connecting ---------------------------------------------------------------------------


def test_fetch_host_key_fingerprint_matches_ssh_keygen(box: SSHBox) -> None:
    keygen = subprocess.run(
        ["ssh-keygen", "-lf", f"{box.host_key_path}.pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]

    assert fetch_host_key_fingerprint("127.0.0.1", box.port, timeout=5) == keygen


def test_host_key_mismatch_is_refused_before_login_and_nothing_runs(box: SSHBox) -> None:
    pinned = box.target()
    box.regenerate_host_key()
    session = BoxSession(pinned, connect_timeout=5)

    with pytest.raises(HostKeyMismatchError):
        session.connect()
    with pytest.raises(HostKeyMismatchError):
        session.write_credentials(HappyCredentials(make_secret(), "token"))

    assert session.commands == []
    assert not box.happy_dir.exists()
    assert "Accepted publickey" not in box.sshd_log()  # our key was never even offered


def test_unpinned_target_is_refused_unless_allowed(box: SSHBox) -> None:
    target = box.target(host_key_fingerprint=None)

    with pytest.raises(PermanentError):
        BoxSession(target).connect()
    with BoxSession(target, allow_unpinned=True) as session:
        assert session.run("true").exit_status == 0


def test_stopped_sshd_is_host_unreachable(box: SSHBox) -> None:
    box.stop()

    started = time.monotonic()
    with pytest.raises(HostUnreachableError):
        BoxSession(box.target(), connect_timeout=2).connect()
    assert time.monotonic() - started < 2


def test_silent_host_times_out_as_host_unreachable() -> None:
    with socket.socket() as listener:  # accepts TCP, never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        silent = SSHTarget(
            "127.0.0.1",
            port,
            "nobody",
            private_key=ClientKey.generate().private_pem,
            host_key_fingerprint="SHA256:x",
        )
        started = time.monotonic()
        with pytest.raises(HostUnreachableError):
            BoxSession(silent, connect_timeout=0.5).connect()
        with pytest.raises(HostUnreachableError):
            fetch_host_key_fingerprint("127.0.0.1", port, timeout=0.5)
        assert time.monotonic() - started < 3


def test_wrong_key_is_ssh_auth_error(box: SSHBox) -> None:
    stranger = box.target(private_key=ClientKey.generate().private_pem)

    with pytest.raises(SSHAuthError):
        BoxSession(stranger, connect_timeout=5).connect()


def test_password_login_works_and_a_wrong_password_is_ssh_auth_error(
    box_fleet: BoxFleet,
) -> None:
    box = box_fleet.new_box(password="correct horse battery")
    try:
        with BoxSession(box.target(private_key=None, password="correct horse battery")) as s:
            assert s.probe() > 0
        with pytest.raises(SSHAuthError):
            BoxSession(box.target(private_key=None, password="wrong")).connect()
    finally:
        box_fleet.remove(box)


def test_command_timeout_is_transient_and_the_session_reconnects(box: SSHBox) -> None:
    with BoxSession(box.target()) as session:
        with pytest.raises(TransientError, match="timed out"):
            session.run("sleep 5", timeout=0.5)
        assert session.run("echo again").output.strip() == "again"


def test_probe_measures_a_round_trip(box: SSHBox) -> None:
    with BoxSession(box.target()) as session:
        latency = session.probe()
    assert 0 < latency < 2


# --- credentials ---------------------------------------------------------------------------


def test_write_credentials_makes_private_dir_and_file_the_cli_accepts(
    box: SSHBox, credentials: HappyCredentials
) -> None:
    with BoxSession(box.target()) as session:
        session.write_credentials(credentials)
        session.write_credentials(credentials)  # idempotent

    uid = box.home.stat().st_uid
    assert stat.S_IMODE(box.happy_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(box.access_key_path.stat().st_mode) == 0o600
    assert box.access_key_path.stat().st_uid == uid
    content = json.loads(box.access_key_path.read_text())
    assert STANDARD_PADDED_BASE64.match(content["secret"])
    assert "+" in content["secret"] and "/" in content["secret"]
    assert base64.b64decode(content["secret"]) == credentials.secret
    assert content["token"] == credentials.token
    assert sorted(p.name for p in box.happy_dir.iterdir()) == ["access.key"]  # no temp left


def test_write_credentials_never_puts_secrets_on_a_command_line(
    box: SSHBox, credentials: HappyCredentials
) -> None:
    with BoxSession(box.target()) as session:
        session.write_credentials(credentials)
        session.start_daemon()
        session.stop_daemon()
        session.wipe_credentials()
        commands = "\n".join(session.commands)

    for secret in (credentials.secret_b64, credentials.token, credentials.secret.hex()):
        assert secret not in commands
    assert "access.key" in commands  # the log did record the write


def test_write_credentials_replaces_a_key_file_with_loose_permissions(
    box: SSHBox, credentials: HappyCredentials
) -> None:
    _write_raw_access_key(box, "old")
    box.access_key_path.chmod(0o644)

    with BoxSession(box.target()) as session:
        session.write_credentials(credentials)

    assert stat.S_IMODE(box.access_key_path.stat().st_mode) == 0o600
    assert json.loads(box.access_key_path.read_text())["token"] == credentials.token


# --- the daemon ----------------------------------------------------------------------------


def test_start_daemon_registers_machine_running_and_stop_reports_shutting_down(
    box: SSHBox, happy_client: HappyClient, credentials: HappyCredentials
) -> None:
    with BoxSession(box.target()) as session:
        assert session.read_machine_id() is None
        session.write_credentials(credentials)
        assert session.start_daemon() is True
        machine_id = session.read_machine_id()
        assert machine_id is not None
        assert session.daemon_status() is True
        running = _wait_for(_machine_with_status(happy_client, credentials, machine_id, "running"))
        assert running.daemon_state and running.daemon_state["pid"] > 0

        session.stop_daemon()

        assert session.daemon_status() is False
        _wait_for(_machine_with_status(happy_client, credentials, machine_id, "shutting-down"))


def test_start_daemon_skips_when_already_running(
    box: SSHBox, credentials: HappyCredentials
) -> None:
    with BoxSession(box.target()) as session:
        session.write_credentials(credentials)
        assert session.start_daemon() is True
        before = len(session.commands)

        assert session.start_daemon() is False

        assert session.commands[before:] == ["happy daemon status"]
        session.stop_daemon()


def test_daemon_survives_the_ssh_session(box: SSHBox, credentials: HappyCredentials) -> None:
    with BoxSession(box.target()) as session:
        session.write_credentials(credentials)
        session.start_daemon()

    with BoxSession(box.target()) as session:
        assert session.daemon_status() is True
        session.stop_daemon()


def test_base64url_access_key_makes_daemon_start_fail_permanently(
    box: SSHBox, credentials: HappyCredentials
) -> None:
    url_safe = base64.urlsafe_b64encode(credentials.secret).decode()
    assert "-" in url_safe or "_" in url_safe
    _write_raw_access_key(box, json.dumps({"secret": url_safe, "token": credentials.token}))

    with BoxSession(box.target()) as session, pytest.raises(PermanentError) as caught:
        session.start_daemon()
    assert "Failed to start daemon" in str(caught.value)
    assert credentials.token not in str(caught.value)


def test_missing_credentials_make_daemon_start_fail_permanently(box: SSHBox) -> None:
    with BoxSession(box.target()) as session, pytest.raises(PermanentError):
        session.start_daemon()


def test_wipe_credentials_removes_key_state_and_machine_identity(
    box: SSHBox, credentials: HappyCredentials
) -> None:
    with BoxSession(box.target()) as session:
        session.write_credentials(credentials)
        session.start_daemon()
        session.stop_daemon()

        session.wipe_credentials()
        session.wipe_credentials()  # idempotent

        assert session.read_machine_id() is None
        assert session.daemon_status() is False
    assert not box.access_key_path.exists()
    assert not box.daemon_state_path.exists()


def test_three_boxes_provision_concurrently(box_fleet: BoxFleet, happy_double: HappyDouble) -> None:
    boxes = box_fleet.start(3)
    client = HappyClient(happy_double.url)

    def provision(box: SSHBox) -> None:
        secret = make_secret()
        creds = HappyCredentials(secret, client.create_account(secret))
        with BoxSession(box.target()) as session:
            session.write_credentials(creds)
            session.start_daemon()
            machine_id = session.read_machine_id()
            assert machine_id is not None
            _wait_for(_machine_with_status(client, creds, machine_id, "running"))
            session.stop_daemon()

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(provision, boxes))  # re-raises the first failure here
    finally:
        for box in boxes:
            box_fleet.remove(box)
