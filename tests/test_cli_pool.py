"""`vibebox pool ...` against real PostgreSQL and real sshd boxes."""

# ruff: noqa: F811 - pytest fixtures imported from tests.pool_fixtures

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text

from app.models import Server
from app.services import pool
from tests.pool_fixtures import (  # noqa: F401 - fixtures used by name
    BOX_PASSWORD,
    CLOSED_HAPPY_URL,
    fake_fingerprint,
    key_box,
    make_box,
    make_server,
    npm_installed_happy,
    password_box,
    pool_fleet,
)


@pytest.fixture
def run(app, db):
    runner = app.test_cli_runner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(args=["pool", *args], env=env)

    return invoke


@pytest.fixture
def key_file(tmp_path, key_box):
    path = tmp_path / "id_ed25519"
    path.write_text(key_box.client_key.private_pem)
    return path


def servers(session) -> list[Server]:
    return list(session.scalars(select(Server)))


def box_args(box) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(box.port), "--user", box.user]


def test_add_with_a_key_file_pins_and_prints_the_host_key(run, session, key_box, key_file):
    result = run("add", *box_args(key_box), "--key-file", str(key_file), "--label", "cli")
    assert result.exit_code == 0, result.output
    assert f"host key pinned: {key_box.host_key_fingerprint}" in result.output
    (server,) = servers(session)
    assert (server.host_key_fingerprint, server.auth_method, server.label) == (
        key_box.host_key_fingerprint,
        "key",
        "cli",
    )
    assert server.cpu_cores >= 1 and server.ram_gb >= 1 and server.disk_gb >= 1  # read from box
    stored = bytes(session.execute(text("SELECT credential_encrypted FROM servers")).scalar_one())
    assert b"PRIVATE KEY" not in stored
    assert "PRIVATE" not in result.output


def test_add_with_a_password_from_the_environment(run, session, password_box):
    result = run(
        "add",
        *box_args(password_box),
        "--password-env",
        "BOX_PW",
        "--cpu",
        "2",
        "--ram-gb",
        "4",
        "--disk-gb",
        "40",
        env={"BOX_PW": BOX_PASSWORD},
    )
    assert result.exit_code == 0, result.output
    assert BOX_PASSWORD not in result.output
    (server,) = servers(session)
    assert (server.auth_method, server.cpu_cores, server.ram_gb, server.disk_gb) == (
        "password",
        2,
        4,
        40,
    )
    stored = bytes(session.execute(text("SELECT credential_encrypted FROM servers")).scalar_one())
    assert BOX_PASSWORD.encode() not in stored


def test_add_refuses_a_mismatching_fingerprint(run, session, key_box, key_file):
    result = run(
        "add",
        *box_args(key_box),
        "--key-file",
        str(key_file),
        "--host-key-fingerprint",
        fake_fingerprint("m"),
    )
    assert result.exit_code == 1
    assert "host key" in result.output and "host_key_mismatch" in result.output
    assert servers(session) == []


def test_add_accepts_the_matching_fingerprint(run, session, key_box, key_file):
    result = run(
        "add",
        *box_args(key_box),
        "--key-file",
        str(key_file),
        "--host-key-fingerprint",
        key_box.host_key_fingerprint,
    )
    assert result.exit_code == 0, result.output


def test_add_refuses_an_unreachable_host(run, session, key_box, key_file):
    key_box.stop()
    result = run(
        "add",
        *box_args(key_box),
        "--key-file",
        str(key_file),
        "--cpu",
        "1",
        "--ram-gb",
        "1",
        "--disk-gb",
        "1",
    )
    assert result.exit_code == 1
    assert "Could not reach" in result.output and "server_unreachable" in result.output
    assert servers(session) == []


def test_add_reports_the_happy_version_and_the_happy_server(run, session, pool_fleet, key_file):
    box = pool_fleet.new_box()
    box.path_override = f"{npm_installed_happy(pool_fleet, '0.13.0')}:/usr/bin:/bin"
    box.restart()
    try:
        result = run("add", *box_args(box), "--key-file", str(key_file))
    finally:
        pool_fleet.remove(box)
    assert result.exit_code == 0, result.output
    assert "(happy-coder 0.13.0)" in result.output
    assert f"Happy server: {box.happy_url} (from the login; ok)" in result.output
    assert len(servers(session)) == 1


def test_add_refuses_a_server_that_cannot_reach_happy_unless_checks_are_skipped(
    run, session, pool_fleet, key_file
):
    box = pool_fleet.new_box(happy_url=CLOSED_HAPPY_URL)
    fingerprint = box.host_key_fingerprint
    try:
        refused = run("add", *box_args(box), "--key-file", str(key_file))
        assert servers(session) == []
        accepted = run("add", *box_args(box), "--key-file", str(key_file), "--skip-checks")
    finally:
        pool_fleet.remove(box)
    assert refused.exit_code == 1
    assert "[server_check_failed]" in refused.output
    assert f"cannot reach the Happy server at {CLOSED_HAPPY_URL}" in refused.output
    assert "--skip-checks" in refused.output
    assert "Traceback" not in refused.output
    assert accepted.exit_code == 0, accepted.output
    assert "checks: SKIPPED" in accepted.output
    assert f"host key pinned: {fingerprint}" in accepted.output
    (server,) = servers(session)
    assert server.host_key_fingerprint == fingerprint


def test_add_refuses_a_login_without_happy_naming_the_install_command(
    run, session, key_box, key_file
):
    key_box.path_override = "/usr/local/bin:/usr/bin:/bin"
    key_box.restart()
    result = run("add", *box_args(key_box), "--key-file", str(key_file))
    assert result.exit_code == 1
    assert "`happy` is not on the PATH" in result.output
    assert "npm install -g happy-coder --allow-scripts=happy-coder" in result.output
    assert servers(session) == []


def test_add_refuses_a_wrong_password(run, session, password_box):
    result = run(
        "add", *box_args(password_box), "--password-env", "BOX_PW", env={"BOX_PW": "wrong-one"}
    )
    assert result.exit_code == 1
    assert "ssh_auth_failed" in result.output
    assert servers(session) == []


def test_add_needs_exactly_one_credential(run, tmp_path, db):
    key = tmp_path / "k"
    key.write_text("x")
    assert run("add", "--host", "h", "--user", "u").exit_code == 2
    both = run(
        "add",
        "--host",
        "h",
        "--user",
        "u",
        "--key-file",
        str(key),
        "--password-env",
        "P",
        env={"P": "x"},
    )
    assert both.exit_code == 2
    assert "exactly one" in both.output
    unset = run("add", "--host", "h", "--user", "u", "--password-env", "NOPE_UNSET")
    assert unset.exit_code == 1 and "NOPE_UNSET" in unset.output


def test_list_shows_state_health_and_allocated_box(run, session):
    busy = make_server(session, host="10.7.0.1", ssh_port=2222, last_latency_ms=17)
    box = make_box(session)
    pool.allocate_server(session, box)
    make_server(
        session,
        host="10.7.0.2",
        state="unhealthy",
        consecutive_failures=4,
        last_error="ssh: connection refused\n(port 22)",
    )
    session.commit()
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["ID", "HOST", "USER", "STATE"]
    busy_line = next(line for line in lines if str(busy.id) in line)
    assert "10.7.0.1:2222" in busy_line and "allocated" in busy_line
    assert str(box.id) in busy_line and "17 ms" in busy_line
    sick_line = next(line for line in lines if "10.7.0.2:22" in line)
    assert "unhealthy" in sick_line and "4 fail" in sick_line and "never" in sick_line
    assert sick_line.endswith("ssh: connection refused (port 22)")
    assert "LAST ERROR" in lines[0] and busy_line.endswith("-")
    only = run("list", "--state", "unhealthy").output
    assert "10.7.0.2" in only and "10.7.0.1" not in only


def test_drain_and_remove(run, session):
    used = make_server(session)
    box = make_box(session)
    pool.allocate_server(session, box)
    unused = make_server(session)
    session.commit()
    drained = run("drain", str(used.id))
    assert drained.exit_code == 0 and "draining" in drained.output
    refused = run("remove", str(used.id))
    assert refused.exit_code == 1 and "server_allocated" in refused.output
    removed = run("remove", str(unused.id))
    assert removed.exit_code == 0 and "deleted" in removed.output
    assert session.scalar(select(func.count()).select_from(Server)) == 1
    missing = run("drain", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "server_not_found" in missing.output
    assert run("remove", "not-an-id").exit_code == 2


def test_update_changes_resources_label_and_region(run, session):
    server = make_server(session, label="old", region="eu")
    session.commit()
    result = run(
        "update",
        str(server.id),
        "--cpu",
        "16",
        "--ram-gb",
        "64",
        "--disk-gb",
        "500",
        "--label",
        "big",
        "--region",
        "",
    )
    assert result.exit_code == 0, result.output
    server = session.get(Server, server.id, populate_existing=True)
    assert (server.cpu_cores, server.ram_gb, server.disk_gb) == (16, 64, 500)
    assert (server.label, server.region, server.state) == ("big", None, "available")
    assert "16 cpu" in result.output and "label big" in result.output


def test_update_drains_and_undrains(run, session):
    idle = make_server(session)
    busy = make_server(session, cpu_cores=8, ram_gb=32, disk_gb=200)
    box = make_box(session, plan_id="enterprise")
    assert pool.allocate_server(session, box).id == busy.id
    session.commit()
    assert run("update", str(idle.id), "--drain").exit_code == 0
    assert run("update", str(busy.id), "--drain").exit_code == 0
    idle = session.get(Server, idle.id, populate_existing=True)
    busy = session.get(Server, busy.id, populate_existing=True)
    assert (idle.state, busy.state) == ("draining", "draining")
    undrained = run("update", str(idle.id), "--undrain")
    assert undrained.exit_code == 0 and "available" in undrained.output
    assert run("update", str(busy.id), "--undrain").exit_code == 0
    idle = session.get(Server, idle.id, populate_existing=True)
    busy = session.get(Server, busy.id, populate_existing=True)
    assert (idle.state, busy.state) == ("available", "allocated")  # its box still runs there


def test_update_refuses_bad_input_in_one_line(run, session):
    server = make_server(session)
    session.commit()
    for args in (
        ["--cpu", "0"],
        ["--ram-gb", str(2**40)],
        ["--label", "x" * 129],
        ["--label", "a\x00b"],
    ):
        result = run("update", str(server.id), *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: invalid input") and result.output.count("\n") == 1
    nothing = run("update", str(server.id))
    assert nothing.exit_code == 2 and "Nothing to change" in nothing.output
    missing = run("update", str(uuid.uuid4()), "--cpu", "2")
    assert missing.exit_code == 1 and "server_not_found" in missing.output
    assert run("update", "not-an-id", "--cpu", "2").exit_code == 2
    server = session.get(Server, server.id, populate_existing=True)
    assert (server.cpu_cores, server.label) == (4, None)
