"""`vibebox pool bootstrap | exec | upgrade-happy` against real PostgreSQL and sshd boxes."""

# ruff: noqa: F811 - pytest fixtures imported from tests.support.happy_package

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.crypto import encrypt_str
from app.integrations.bootstrap import bootstrap_host
from app.models import Server
from tests.pool_fixtures import make_box
from tests.support.happy_package import (  # noqa: F401 - fixtures used by name
    bare_box,
    box_settings,
    happy_tarballs,
    npm_prefix,
)
from tests.support.sshd import BoxFleet, SSHBox


@pytest.fixture
def run(app: Any, db: Any) -> Any:
    runner = app.test_cli_runner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
        return runner.invoke(args=["pool", *args], env=env)

    return invoke


@pytest.fixture
def key_file(tmp_path: Path, box_fleet: BoxFleet) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text(box_fleet.client_key.private_pem)
    return path


@pytest.fixture
def boxes(box_fleet: BoxFleet) -> Iterator[list[SSHBox]]:
    made = box_fleet.start(3)
    yield made
    for box in made:
        box_fleet.remove(box)


def real_server(session: Any, settings: Any, box: SSHBox, **fields: Any) -> Server:
    """A pool row for a real sshd box (credential sealed as add_server seals it)."""
    server_id = uuid.uuid4()
    server = Server(
        id=server_id,
        host="127.0.0.1",
        ssh_port=box.port,
        ssh_user=box.user,
        auth_method="key",
        credential_encrypted=encrypt_str(
            settings.encryption_key,
            box.client_key.private_pem,
            aad=f"server-credential:{server_id}",
        ),
        host_key_fingerprint=box.host_key_fingerprint,
        cpu_cores=2,
        ram_gb=4,
        disk_gb=40,
        state=fields.pop("state", "available"),
        **fields,
    )
    session.add(server)
    session.flush()
    return server


def state_of(session: Any, server_id: uuid.UUID) -> str:
    return str(session.scalar(select(Server.state).where(Server.id == server_id)))


def bootstrap_env(box: SSHBox, tarball: Path, prefix: Path) -> dict[str, str]:
    settings = box_settings(box, tarball, prefix)
    return {
        "HAPPY_CODER_PACKAGE": settings.happy_coder_package,
        "HAPPY_NPM_PREFIX": str(prefix),
        "BOOTSTRAP_NODE_INSTALL_COMMAND": settings.node_install_command,
        "BOOTSTRAP_ENV_METHOD": settings.env_method,
        "BOOTSTRAP_ENV_FILE": settings.env_file,
        "BOOTSTRAP_SSHD_RELOAD_COMMAND": settings.sshd_reload_command,
    }


# --- bootstrap -----------------------------------------------------------------------------


def test_bootstrap_asks_for_the_host_key_before_doing_anything(
    run: Any, bare_box: SSHBox, key_file: Path, happy_tarballs: Any, npm_prefix: Path
) -> None:
    env = bootstrap_env(bare_box, happy_tarballs["0.13.0"], npm_prefix)
    args = ["--host", "127.0.0.1", "--port", str(bare_box.port), "--user", bare_box.user]

    unpinned = run("bootstrap", *args, "--key-file", str(key_file), env=env)
    wrong = run(
        "bootstrap",
        *args,
        "--key-file",
        str(key_file),
        "--accept-host-key",
        "SHA256:" + "B" * 43,
        env=env,
    )

    assert unpinned.exit_code == 1
    assert f"--accept-host-key {bare_box.host_key_fingerprint}" in unpinned.output
    assert wrong.exit_code == 1 and "refused" in wrong.output
    assert "Accepted publickey" not in bare_box.sshd_log()
    assert not (npm_prefix / "lib").exists()


def test_bootstrap_with_add_bootstraps_then_adds_and_a_rerun_changes_nothing(
    run: Any,
    session: Any,
    bare_box: SSHBox,
    key_file: Path,
    happy_double: Any,
    happy_tarballs: Any,
    npm_prefix: Path,
) -> None:
    env = bootstrap_env(bare_box, happy_tarballs["0.13.0"], npm_prefix)
    args = [
        "--host",
        "127.0.0.1",
        "--port",
        str(bare_box.port),
        "--user",
        bare_box.user,
        "--key-file",
        str(key_file),
        "--happy-server-url",
        happy_double.url,
        "--accept-host-key",
        bare_box.host_key_fingerprint,
    ]

    first = run("bootstrap", *args, "--add", "--label", "bootstrapped", env=env)
    second = run("bootstrap", *args, env=env)

    assert first.exit_code == 0, first.output
    assert "happy        done" in first.output and "environment  done" in first.output
    assert "added server" in first.output
    (server,) = session.scalars(select(Server).where(Server.ssh_port == bare_box.port))
    assert server.label == "bootstrapped"
    assert server.host_key_fingerprint == bare_box.host_key_fingerprint
    assert second.exit_code == 0, second.output
    assert "nothing to do: already bootstrapped" in second.output
    assert " done " not in second.output


# --- exec ----------------------------------------------------------------------------------


def test_exec_reports_each_host_and_fails_when_one_host_fails(
    run: Any, session: Any, settings: Any, boxes: list[SSHBox]
) -> None:
    ok, nonzero, down = (real_server(session, settings, b) for b in boxes)
    session.commit()
    boxes[2].stop()  # unreachable

    result = run(
        "exec",
        "--all",
        "--parallel",
        "2",
        "--timeout",
        "20",
        "--",
        f'echo "me=$(whoami)"; [ "$(whoami)" != {boxes[1].user} ]',
    )

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    line_of = {
        s.id: next(line for line in lines if line.startswith(str(s.id)))
        for s in (ok, nonzero, down)
    }
    assert "exit 0" in line_of[ok.id]
    assert "exit 1" in line_of[nonzero.id]
    assert "ERROR" in line_of[down.id]
    assert f"    me={boxes[0].user}" in lines and f"    me={boxes[1].user}" in lines
    assert lines[-1] == "1 ok, 2 failed"


def test_exec_on_named_servers_with_a_per_command_timeout(
    run: Any, session: Any, settings: Any, boxes: list[SSHBox]
) -> None:
    first = real_server(session, settings, boxes[0])
    real_server(session, settings, boxes[1])  # not named: not run
    session.commit()

    fine = run("exec", "--server", str(first.id), "--", "uname", "-s")
    slow = run("exec", "--server", str(first.id), "--timeout", "1", "--", "sleep 10")

    assert fine.exit_code == 0, fine.output
    assert "    Linux" in fine.output and fine.output.strip().endswith("1 ok, 0 failed")
    assert slow.exit_code == 1 and "timed out after 1.0s" in slow.output


# --- upgrade-happy -------------------------------------------------------------------------


def test_upgrade_happy_skips_a_busy_server_and_upgrades_and_reverifies_the_free_one(
    run: Any,
    session: Any,
    settings: Any,
    box_fleet: BoxFleet,
    happy_double: Any,
    happy_tarballs: Any,
    npm_prefix: Path,
    tmp_path: Path,
) -> None:
    busy_box, free_box = box_fleet.new_box(bare=True), box_fleet.new_box(bare=True)
    try:
        for box in (busy_box, free_box):
            bootstrap_host(
                box.target(),
                happy_server_url=happy_double.url,
                settings=box_settings(box, happy_tarballs["0.13.0"], npm_prefix),
            )
        busy = real_server(session, settings, busy_box, state="allocated")
        free = real_server(session, settings, free_box)
        make_box(session, server_id=busy.id, status="running")
        session.commit()
        env = bootstrap_env(free_box, happy_tarballs["0.13.1"], npm_prefix)
        env["BOOTSTRAP_ENV_FILE"] = str(tmp_path / "never-written")

        result = run("upgrade-happy", env=env)

        assert result.exit_code == 0, result.output
        assert f"{busy.id} {busy_box.user}@127.0.0.1:{busy_box.port}: skipped_busy" in (
            result.output
        )
        assert f"{free.id} " in result.output
        assert "upgraded happy-coder 0.13.1 (verified)" in result.output
        assert (state_of(session, free.id), state_of(session, busy.id)) == (
            "available",
            "allocated",
        )
        assert not (tmp_path / "never-written").exists()
        version = (npm_prefix / "lib/node_modules/happy-coder/package.json").read_text()
        assert '"version": "0.13.1"' in version

        again = run("upgrade-happy", env=env)
        assert again.exit_code == 0 and "unchanged happy-coder 0.13.1" in again.output
    finally:
        box_fleet.remove(busy_box)
        box_fleet.remove(free_box)


def test_upgrade_happy_quarantines_a_server_that_fails_and_stops(
    run: Any, session: Any, settings: Any, boxes: list[SSHBox], tmp_path: Path
) -> None:
    first = real_server(session, settings, boxes[0])
    second = real_server(session, settings, boxes[1])
    session.commit()
    env = {
        "HAPPY_CODER_PACKAGE": str(tmp_path / "happy-coder-9.9.9.tgz"),  # does not exist
        "HAPPY_NPM_PREFIX": str(tmp_path / "prefix"),
        "BOOTSTRAP_ENV_FILE": str(tmp_path / "never-written"),
    }

    result = run("upgrade-happy", env=env)

    assert result.exit_code == 1, result.output
    # One server at a time: the first one (in pool order) fails, the other is not touched.
    lines = result.output.splitlines()
    failed_line = next(line for line in lines if ": failed (" in line)
    failed, other = (first, second) if failed_line.startswith(str(first.id)) else (second, first)
    assert "npm install exited" in failed_line
    assert any(line.startswith(f"{other.id} ") and ": not_reached" in line for line in lines)
    row = session.scalars(select(Server).where(Server.id == failed.id)).one()
    assert row.state == "unhealthy" and "upgrade-happy" in (row.last_error or "")
    assert state_of(session, other.id) == "available"
