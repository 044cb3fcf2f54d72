"""Fabric connections follow our SSH rules: pinned host key, no SSH config, no agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import HostKeyMismatchError
from app.integrations import fabric_ssh
from tests.support.sshd import SSHBox

WRONG_KEY = "SHA256:" + "C" * 43


def test_fabric_ignores_the_users_ssh_config_and_known_hosts(
    box: SSHBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "Host *\n  HostName 192.0.2.1\n  Port 1\n  User nobody\n  ProxyCommand false\n"
    )
    other_key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    (home / ".ssh" / "known_hosts").write_text(
        f"[127.0.0.1]:{box.port} ssh-ed25519 {other_key}\n"  # a different key for the box
    )
    monkeypatch.setenv("HOME", str(home))

    connection = fabric_ssh.fabric_connection(box.target())
    try:
        result = fabric_ssh.run(connection, "whoami", timeout=10)
    finally:
        connection.close()

    assert result.exit_status == 0 and result.stdout.strip() == box.user


def test_fabric_refuses_a_host_key_that_differs_from_the_pin(box: SSHBox) -> None:
    connection = fabric_ssh.fabric_connection(box.target(host_key_fingerprint=WRONG_KEY))
    with pytest.raises(HostKeyMismatchError):
        fabric_ssh.run(connection, "touch ran", timeout=10)
    assert not (box.home / "ran").exists()
    assert "Accepted publickey" not in box.sshd_log()


def test_run_on_hosts_reports_a_refused_key_per_host(box: SSHBox) -> None:
    results = fabric_ssh.run_on_hosts(
        [("good", box.target()), ("bad", box.target(host_key_fingerprint=WRONG_KEY))],
        "echo hi",
        parallel=2,
        timeout=10,
    )
    good, bad = results
    assert (good.name, good.ok, good.exit_status, good.output.strip()) == ("good", True, 0, "hi")
    assert bad.name == "bad" and not bad.ok and "host key mismatch" in (bad.error or "")
