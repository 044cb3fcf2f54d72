"""`vibebox boxes ...` and the `vibebox` group itself, against the real test database."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner
from flask.cli import ScriptInfo

from app.cli import NO_DATABASE, cli
from app.models import VibeBox
from app.services.boxes import events
from tests.pool_fixtures import make_box, make_server
from tests.services.engine_harness import PERMANENT, Harness


@pytest.fixture
def run(app, db):
    runner = app.test_cli_runner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(args=["boxes", *args], input=input)

    return invoke


@pytest.fixture
def harness(session, settings):
    h = Harness(session, settings)
    yield h
    h.close()


@pytest.fixture
def failed_box(harness):
    """A box the engine put in error: create_happy_account failed permanently."""
    harness.world.script["create_happy_account"] = [PERMANENT]
    box = harness.drive(harness.pay().id)
    assert box.status == "error"
    harness.published.clear()
    return box


def status_of(session, box_id) -> str:
    return session.scalar(
        VibeBox.__table__.select().with_only_columns(VibeBox.status).where(VibeBox.id == box_id)
    )


def test_list_filters_and_shows_status_step_progress(run, session, failed_box):
    server = make_server(session, state="allocated")
    sick = make_box(
        session,
        status="running",
        server_id=server.id,
        degraded_since=datetime.now(UTC),
        degraded_reason="daemon down",
    )
    waiting = make_box(session, plan_id="pro", status="waiting_for_capacity")
    session.commit()
    everything = run("list")
    assert everything.exit_code == 0, everything.output
    header, *rows = everything.output.splitlines()
    assert header.split()[:4] == ["ID", "STATUS", "STEP", "PROGRESS"]
    assert len(rows) == 3
    failed_line = next(r for r in rows if str(failed_box.id) in r)
    assert "error" in failed_line and "create_happy_account" in failed_line and "0/5" in failed_line

    def ids(*args: str) -> set[str]:
        result = run("list", *args)
        assert result.exit_code == 0, result.output
        return {line.split()[0] for line in result.output.splitlines()[1:]}

    assert ids("--status", "error") == {str(failed_box.id)}
    assert ids("--degraded") == {str(sick.id)}
    assert ids("--waiting") == {str(waiting.id)}
    assert ids("--plan", "pro") == {str(waiting.id)}
    assert ids("--server", str(server.id)) == {str(sick.id)}
    assert ids("--user", str(failed_box.user_id)) == {str(failed_box.id)}
    limited = run("list", "--limit", "1").output.splitlines()
    assert len(limited) == 3 and limited[-1].startswith("(1 of 3;")
    assert run("list", "--user", str(uuid.uuid4())).output == "no boxes\n"
    assert run("list", "--status", "sleeping").exit_code == 2
    assert run("list", "--server", "nope").exit_code == 2


def test_show_prints_the_error_timeline_and_events(run, failed_box):
    result = run("show", str(failed_box.id))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "status:      error" in out
    assert "last error:  create_happy_account cannot work." in out
    assert "progress:    0/5" in out
    assert "timeline:" in out and "events:" in out
    step_line = next(line for line in out.splitlines() if "create_happy_account  failed" in line)
    assert "create_happy_account cannot work." in step_line
    assert "failed: Failed at create_happy_account" in out


def test_show_of_a_degraded_box_gives_the_reason(run, session):
    box = make_box(
        session, status="running", degraded_since=datetime.now(UTC), degraded_reason="disk full"
    )
    session.commit()
    out = run("show", str(box.id)).output
    assert "degraded:" in out and "disk full" in out


def test_retry_resumes_a_failed_box_through_the_engine(run, session, harness, failed_box, db):
    result = run("retry", str(failed_box.id))
    assert result.exit_code == 0, result.output
    assert "provisioning, resuming from create_happy_account" in result.output
    assert status_of(session, failed_box.id) == "provisioning"
    assert harness.jobs_for(failed_box.id) == ["create_happy_account"]  # published on commit
    assert any(
        e.kind == "retried" and "by cli" in e.message for e in events.recent(session, failed_box.id)
    )
    again = run("retry", str(failed_box.id))
    assert again.exit_code == 1
    assert again.output == (
        "Error: Only a box in error can be retried; this one is provisioning [vibebox_not_failed]\n"
    )


def test_terminate_tears_a_box_down_forced(run, session, harness):
    harness.add_server()
    box = harness.drive(harness.pay().id)
    assert box.status == "running"
    harness.published.clear()
    refused = run("terminate", str(box.id), input="n\n")
    assert refused.exit_code == 1 and status_of(session, box.id) == "running"
    result = run("terminate", str(box.id), "--yes")
    assert result.exit_code == 0, result.output
    assert "terminating: teardown started" in result.output
    box = harness.box(box.id)
    assert (box.status, box.teardown_cancellable) == ("terminating", False)
    assert harness.jobs_for(box.id) == ["stop_daemon"]
    assert harness.drive(box.id).status == "terminated"
    twice = run("terminate", str(box.id), "--yes")
    assert twice.exit_code == 1 and "cannot be terminated" in twice.output


def test_terminate_a_failed_box_without_a_server_ends_it(run, session, failed_box):
    result = run("terminate", str(failed_box.id), "--yes")
    assert result.exit_code == 0, result.output
    assert "terminated" in result.output
    assert status_of(session, failed_box.id) == "terminated"


def test_unknown_boxes_are_one_line_errors(run):
    for command in ("show", "retry"):
        result = run(command, str(uuid.uuid4()))
        assert result.exit_code == 1
        assert result.output == "Error: No such VibeBox [vibebox_not_found]\n"
    missing = run("terminate", str(uuid.uuid4()), "--yes")
    assert missing.output == "Error: No such VibeBox [vibebox_not_found]\n"
    assert run("show", "not-a-uuid").exit_code == 2


# --- the `vibebox` group -------------------------------------------------------------


def invoke_cli(args: list[str], env: dict[str, str | None], create_app=None):
    from app.cli import _create_app

    runner = CliRunner()
    return runner.invoke(cli, args, env=env, obj=ScriptInfo(create_app=create_app or _create_app))


def test_help_lists_only_vibebox_commands():
    result = invoke_cli(["--help"], env={})
    assert result.exit_code == 0
    lines = result.output.split("Commands:")[1].strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "boxes",
        "cloud",
        "db",
        "orders",
        "plans",
        "pool",
        "user",
    ]


def test_without_a_database_every_command_says_so_in_one_line(tmp_path):
    env = {"DATABASE_URL": None, "REDIS_URL": None, "VIBEBOX_VAR_DIR": str(tmp_path)}
    for args in (["boxes", "list"], ["pool", "list"], ["db", "current"]):
        result = invoke_cli(args, env=env)
        assert result.exit_code == 1, args
        assert result.output == f"Error: {NO_DATABASE}\n", args
    assert invoke_cli(["boxes", "--help"], env=env).exit_code == 0  # help needs no database


def test_an_unreachable_database_is_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    env = {
        "DATABASE_URL": f"postgresql+psycopg://nobody@127.0.0.1:{port}/nothing",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "VIBEBOX_VAR_DIR": str(tmp_path),
    }
    result = invoke_cli(["boxes", "list"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach the database: ")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_the_group_runs_box_commands_with_an_app(app, db, failed_box):
    result = invoke_cli(["boxes", "show", str(failed_box.id)], env={}, create_app=lambda: app)
    assert result.exit_code == 0, result.output
    assert "status:      error" in result.output


def test_embedded_services_are_found_while_they_run(tmp_path, monkeypatch):
    """The servers a `make run` keeps running under var/ are found (real ones, started here
    through scripts/services.py); once stopped, nothing is."""
    from app import cli as app_cli
    from tests.support.redis_server import _quiet_port

    monkeypatch.setenv("VIBEBOX_REDIS_PORT", str(_quiet_port()))
    assert app_cli.embedded_service_urls(str(tmp_path)) == {}  # loads scripts/services.py
    services = __import__("sys").modules["vibebox_services"]
    with services.running_services("run", var_dir=tmp_path, environ={}) as urls:
        assert app_cli.embedded_service_urls(str(tmp_path)) == urls
        environ = {"REDIS_URL": "redis://127.0.0.1:6379/0", "VIBEBOX_VAR_DIR": str(tmp_path)}
        app_cli.use_embedded_services(environ)
        assert environ["DATABASE_URL"] == urls["DATABASE_URL"]
        assert environ["REDIS_URL"] == "redis://127.0.0.1:6379/0"  # what is set stays
    assert app_cli.embedded_service_urls(str(tmp_path)) == {}
    only_postgres = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    with (
        services.running_services("run", var_dir=tmp_path, environ=only_postgres),
        pytest.raises(click.ClickException, match="no Redis"),
    ):
        app_cli.use_embedded_services({"VIBEBOX_VAR_DIR": str(tmp_path)})
