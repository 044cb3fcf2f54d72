"""BoxSession against real sshd boxes running the `happy` stand-in and the Happy double."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from app.errors import (
    HostKeyMismatchError,
    HostUnreachableError,
    PermanentError,
    SSHAuthError,
    TransientError,
)
from app.integrations.ssh import BoxSession, SSHTarget, fetch_host_key_fingerprint
from tests.support.sshd import BoxFleet, ClientKey, SSHBox


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
        session.run("touch ran")

    assert session.commands == []
    assert not (box.home / "ran").exists()
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


# --- a login's own ~/.happy (boxes from before per-box users) ----------------------------


def test_legacy_wipe_removes_a_login_s_happy_state(box: SSHBox) -> None:
    _write_raw_access_key(box, "{}")
    happy = box.home / ".happy"
    (happy / "settings.json").write_text("{}")
    with BoxSession(box.target()) as session:
        assert session.daemon_status() is False
        session.stop_daemon()  # nothing runs: still fine
        session.wipe_credentials()
        session.wipe_credentials()  # idempotent
    assert not (happy / "access.key").exists() and not (happy / "settings.json").exists()
