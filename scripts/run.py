#!/usr/bin/env python3
"""Developer entry points behind ``make run``, ``make test`` and the Procfile's flower line.

    python scripts/run.py serve    # services, migrations, then web+worker+beat+flower (honcho)
    python scripts/run.py test     # system packages, test services, pytest -n auto $PYTEST_ARGS
    python scripts/run.py flower   # Flower with the auth policy of VIBEBOX_ENV (Procfile)
    python scripts/run.py respawn NAME -- CMD ...   # keep CMD running (Procfile worker, beat)

``serve`` and ``test`` use the servers of ``DATABASE_URL``/``REDIS_URL`` when set, else
embedded ones under ``var/`` (see scripts/services.py), and stop on exit what they started.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.executable).parent  # the venv's bin when run as .venv/bin/python
# `release` runs before, not beside. Two workers: threads for provisioning (README).
PROCFILE_PROCESSES = ("web", "worker", "maintenance", "beat", "flower")
PYTEST_NO_TESTS = 5


def say(message: str) -> None:
    print(f"[vibebox] {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> int:
    say(f"error: {message}")
    return code


# --------------------------------------------------------------------------- environment


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, parsed by python-dotenv (empty values dropped)."""
    from dotenv import dotenv_values

    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None and v != ""}


def app_environment(*, dotenv: bool = True) -> dict[str, str]:
    """The process environment plus ``.env`` (variables already set win, as with dotenv)."""
    env = dict(os.environ)
    if dotenv:
        for key, value in read_dotenv(REPO_ROOT / ".env").items():
            env.setdefault(key, value)
    path = env.get("PATH", "")
    if str(BIN_DIR) not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (str(BIN_DIR), path) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    return (env.get(name) or "").strip() or default


def tool(name: str) -> str:
    candidate = BIN_DIR / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def _services() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import services

    return services


# --------------------------------------------------------------------------- flower


def flower_auth_problem(env: Mapping[str, str]) -> str | None:
    """Why Flower must not start with this environment (None: fine)."""
    mode = _env(env, "VIBEBOX_ENV", "development")
    auth = (env.get("FLOWER_BASIC_AUTH") or "").strip()
    if not auth:
        if mode == "development":
            return None
        return (
            f"FLOWER_BASIC_AUTH (user:password) is required when VIBEBOX_ENV={mode}; "
            "Flower exposes task arguments and control of the workers"
        )
    for credential in auth.split(","):
        user, sep, password = credential.partition(":")
        if not sep or not user.strip() or not password:
            return "FLOWER_BASIC_AUTH must be user:password (comma-separated for several users)"
    return None


def flower_command(env: MutableMapping[str, str]) -> list[str]:
    """The flower command line; credentials stay in the environment (Flower reads
    FLOWER_BASIC_AUTH itself), so they never show up in ``ps``."""
    if not (env.get("FLOWER_BASIC_AUTH") or "").strip():
        env.pop("FLOWER_BASIC_AUTH", None)  # an empty value would enable auth with no user
    return [
        tool("celery"),
        "-A",
        "workers",
        "flower",
        f"--address={_env(env, 'HOST', '127.0.0.1')}",
        f"--port={_env(env, 'FLOWER_PORT', '5555')}",
    ]


def cmd_flower(_args: argparse.Namespace) -> int:
    env = dict(os.environ)
    problem = flower_auth_problem(env)
    if problem:
        return fail(problem)
    command = flower_command(env)
    if "FLOWER_BASIC_AUTH" not in env:
        say("Flower runs WITHOUT authentication (development, no FLOWER_BASIC_AUTH)")
        if _env(env, "HOST", "127.0.0.1") not in ("127.0.0.1", "localhost", "::1"):
            say("warning: and it listens beyond loopback; set FLOWER_BASIC_AUTH=user:password")
    os.execvpe(command[0], command, env)  # noqa: S606 - replace this process, keep its PID
    return 0  # not reached


# --------------------------------------------------------------------------- respawn

RESPAWN_MAX_RESTARTS = 5  # restarts within RESPAWN_WINDOW before giving up
RESPAWN_WINDOW = 600.0
RESPAWN_BACKOFF_MAX = 30.0
RESPAWN_STABLE_AFTER = 60.0  # a run this long resets the backoff
RESPAWN_FORWARD_AFTER = 2.0  # a stop signal the child did not get itself is passed on
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def respawn(
    name: str,
    command: Sequence[str],
    *,
    max_restarts: int = RESPAWN_MAX_RESTARTS,
    window: float = RESPAWN_WINDOW,
    backoff_max: float = RESPAWN_BACKOFF_MAX,
) -> int:
    """Run ``command`` and start it again whenever it exits without being asked to stop.

    honcho (``make run``) stops every process as soon as one exits; the worker and beat run
    under this loop so that one of them crashing is logged and restarted (backoff 1 s
    doubling to ``backoff_max``) instead of taking the API down with it. More than
    ``max_restarts`` restarts within ``window`` seconds: give up with the command's status.
    A stop signal (SIGTERM, SIGINT, SIGHUP) ends the loop; honcho signals the whole process
    group, so the command normally has it already, else it is passed on after 2 s.
    """
    stop: list[tuple[int, float]] = []

    def on_stop(signum: int, _frame: object) -> None:
        if not stop:
            stop.append((signum, time.monotonic()))

    previous = {signum: signal.signal(signum, on_stop) for signum in STOP_SIGNALS}
    restarts: deque[float] = deque()
    delay = first_delay = min(1.0, backoff_max)
    try:
        while not stop:
            started = time.monotonic()
            child = subprocess.Popen(list(command))
            forwarded = False
            while True:
                try:
                    returncode = child.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stop and not forwarded and time.monotonic() - stop[0][1] > RESPAWN_FORWARD_AFTER:
                    child.send_signal(stop[0][0])
                    forwarded = True
            status = 128 - returncode if returncode < 0 else returncode
            if stop:
                return status
            now = time.monotonic()
            if now - started > RESPAWN_STABLE_AFTER:
                delay = first_delay
            while restarts and now - restarts[0] > window:
                restarts.popleft()
            if len(restarts) >= max_restarts:
                say(
                    f"{name} exited with status {status}, its {max_restarts}th exit within "
                    f"{window:.0f}s: not restarting it"
                )
                return status or 1
            restarts.append(now)
            say(f"{name} exited with status {status}; restarting it in {delay:.0f}s")
            while not stop and time.monotonic() - now < delay:
                time.sleep(0.1)
            delay = min(delay * 2, backoff_max)
        return 128 + stop[0][0]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_respawn(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return fail("respawn needs a command: run.py respawn NAME -- CMD ...", 2)
    return respawn(args.name, command)


# --------------------------------------------------------------------------- serve


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - display only


def payments_line(env: Mapping[str, str]) -> str:
    """What the banner says about payments (app/config.py decides what is enabled)."""
    configured = (env.get("PAYMENT_PROVIDERS") or "").strip()
    if not configured:
        if _env(env, "VIBEBOX_ENV", "development") == "development":
            return "dev provider (pay on the dev checkout page)"
        return "none enabled (set PAYMENT_PROVIDERS)"
    names = [n.strip() for n in configured.split(",") if n.strip()]
    extra = " (dev: pay on the dev checkout page)" if "dev" in names else ""
    return f"{', '.join(names)}{extra}"


def banner(
    env: Mapping[str, str], descriptions: Mapping[str, str], demo_lines: Sequence[str] = ()
) -> str:
    host = _display_host(_env(env, "HOST", "127.0.0.1"))
    port = _env(env, "PORT", "5000")
    flower_port = _env(env, "FLOWER_PORT", "5555")
    flower_auth = "basic auth" if (env.get("FLOWER_BASIC_AUTH") or "").strip() else "no auth"
    lines = [
        f"VibeBox ({_env(env, 'VIBEBOX_ENV', 'development')}) is starting:",
        f"  API         http://{host}:{port}/",
        f"  API docs    http://{host}:{port}/docs",
        f"  Flower      http://{host}:{flower_port}/  ({flower_auth})",
        f"  PostgreSQL  {descriptions.get('postgres', '?')}",
        f"  Redis       {descriptions.get('redis', '?')}",
        f"  Payments: {payments_line(env)}",
        *(f"  {line}" for line in demo_lines),
        "  Ctrl-C stops everything started here.",
    ]
    return "\n".join(lines)


def reset_metrics_dir(env: MutableMapping[str, str]) -> Path:
    """PROMETHEUS_MULTIPROC_DIR (default var/prometheus): emptied at start, since the
    metric files of the processes of an earlier run are not this run's."""
    path = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or REPO_ROOT / "var" / "prometheus")
    if path.is_dir():
        for child in path.glob("*.db"):
            child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None: it can). Binds it briefly the way
    gunicorn does (SO_REUSEADDR: a port in TIME_WAIT is free, one with a listener is not)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot resolve {host}: {exc}"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def port_problem(env: Mapping[str, str]) -> str | None:
    """One line naming the first port ``serve`` needs that is taken (API PORT, FLOWER_PORT),
    and the variable to change; None when both are free."""
    host = _env(env, "HOST", "127.0.0.1")
    for variable, default in (("PORT", "5000"), ("FLOWER_PORT", "5555")):
        raw = _env(env, variable, default)
        try:
            port = int(raw)
            if not 0 < port < 65536:
                raise ValueError(raw)
        except ValueError:
            return f"{variable}={raw!r} is not a port number (1-65535)"
        reason = port_in_use(host, port)
        if reason:
            return (
                f"port {port} on {host} ({variable}) is not available: {reason}; stop what "
                f"uses it or set {variable} to a free port (e.g. {variable}={port + 1})"
            )
    return None


def start_demo(env: MutableMapping[str, str]) -> tuple[Any, dict[str, str]]:
    """The offline demo's parts that ``env`` leaves unconfigured (app/devtools/demo.py):
    (the started demo or None, variables for the stack such as HAPPY_SERVER_URL)."""
    from app.devtools import demo as demo_tools

    plan = demo_tools.plan_demo(env)
    if not plan.anything:
        if plan.reasons:
            return demo_tools.Demo(demo_tools.demo_dir(env, REPO_ROOT), lines=[*plan.reasons]), {}
        return None, {}
    try:
        return demo_tools.start_demo(env, REPO_ROOT, plan, say=say)
    except demo_tools.DemoError as exc:
        raise _services().ServiceError(str(exc)) from None


def cmd_serve(_args: argparse.Namespace) -> int:
    services = _services()
    env = app_environment()
    problem = flower_auth_problem(env) or port_problem(env)
    if problem:
        return fail(problem)
    os.chdir(REPO_ROOT)
    (REPO_ROOT / "var").mkdir(exist_ok=True)  # beat keeps var/celerybeat-schedule
    reset_metrics_dir(env)
    session = services.ServiceSession("run", environ=env)
    demo = None
    try:
        with services.running_services(session=session) as urls:
            env.update(urls)
            say("applying migrations: vibebox db upgrade")
            status = services.supervise([tool("vibebox"), "db", "upgrade"], env)
            if status != 0:
                return fail(f"vibebox db upgrade failed (exit {status})", status)
            demo, extra = start_demo(env)
            env.update(extra)
            print(banner(env, session.descriptions, demo.lines if demo else ()), flush=True)
            honcho = [
                tool("honcho"),
                "start",
                "-f",
                str(REPO_ROOT / "Procfile"),
                "--app-root",
                str(REPO_ROOT),
                "--env",
                os.devnull,  # .env is already merged, with the environment winning
                "--port",
                _env(env, "PORT", "5000"),  # honcho hands the first process PORT
                *PROCFILE_PROCESSES,
            ]
            # honcho stops its processes within 5 s of a signal; past 20 s it is stuck.
            return services.supervise(honcho, env, kill_after=20.0)
    except services.Interrupted as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130
    except services.ServiceError as exc:
        return fail(str(exc))
    finally:
        if demo is not None:
            demo.stop()  # by PID, what start_demo started; box users stay (README)


# --------------------------------------------------------------------------- test


POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def _apt_install(packages: Sequence[str]) -> None:
    """apt-get install, with `apt-get update` only when the install fails without it.

    While it runs, a policy-rc.d forbids starting services: installing openssh-server must
    not leave a system sshd listening on port 22 (the tests run their own on loopback).
    """
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    say(f"installing system packages: {' '.join(packages)}")
    own_policy = not POLICY_RC_D.exists()
    if own_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# written by scripts/run.py during apt-get\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False).returncode:
            say("apt-get install failed; refreshing package lists with apt-get update")
            update = ["apt-get", "update", "-q"]
            subprocess.run(update, env=env, stdin=subprocess.DEVNULL, check=True)
            subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=True)
    finally:
        if own_policy:
            POLICY_RC_D.unlink(missing_ok=True)


def missing_system_packages() -> dict[str, str]:
    """Debian packages the test suite needs, by what is missing (path -> package)."""
    needs = {
        "/usr/sbin/sshd": "openssh-server",  # the pool servers of the end-to-end tests
        "/usr/bin/python3": "python3",  # what box users run (the venv's Python may be unreadable)
        "/usr/bin/openssl": "openssl",  # password hashes for the password-login box tests
        "/usr/bin/pkill": "procps",  # cleaning up test box users' processes
        "/usr/bin/sudo": "sudo",  # the test pool logins are passwordless sudoers
        "/usr/bin/crontab": "cron",  # box users leave crontab entries for teardown to find
        "/usr/bin/at": "at",  # ... and at jobs
        "/usr/bin/docker-compose": "docker-compose",  # validates docker-compose.yml offline
        # the end-to-end tests on RabbitMQ start their own node (tests/support/rabbitmq.py)
        "/usr/lib/rabbitmq/bin/rabbitmq-server": "rabbitmq-server",
    }
    return {path: pkg for path, pkg in needs.items() if not Path(path).exists()}


def ensure_system_packages() -> str | None:
    """Install what is missing when root; otherwise say what to install (None: all there)."""
    missing = missing_system_packages()
    if not missing:
        return None
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (
            f"the tests need {', '.join(sorted(missing))}; install the Debian package(s) "
            f"{' '.join(packages)} (e.g. sudo apt-get install {' '.join(packages)})"
        )
    try:
        _apt_install(packages)
    except subprocess.CalledProcessError as exc:
        return f"could not install {' '.join(packages)}: {exc}"
    still = missing_system_packages()
    return f"still missing after install: {', '.join(sorted(still))}" if still else None


def pytest_status(returncode: int) -> int:
    """pytest's exit code, except that 'no tests collected' (5) is a failure too."""
    return 1 if returncode == PYTEST_NO_TESTS else returncode


def cmd_test(_args: argparse.Namespace) -> int:
    problem = ensure_system_packages()
    if problem:
        return fail(problem)
    services = _services()
    # Not .env: it describes the development stack, and tests must never get its database.
    env = app_environment(dotenv=False)
    env.setdefault("VIBEBOX_ENV", "testing")
    os.chdir(REPO_ROOT)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-n",
        "auto",
        *shlex.split(env.get("PYTEST_ARGS", "")),
    ]
    try:
        with services.running_services("test", environ=env) as urls:
            env.update(urls)
            say(f"running {shlex.join(command[1:])}")
            status = services.supervise(command, env)
    except services.Interrupted as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130
    except services.ServiceError as exc:
        return fail(str(exc))
    if status == PYTEST_NO_TESTS:
        say("pytest collected no tests: counted as a failure")
    return pytest_status(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("serve", help="run the whole stack (make run)")
    sub.add_parser("test", help="run the test suite against real services (make test)")
    sub.add_parser("flower", help="start Flower (Procfile)")
    p_respawn = sub.add_parser("respawn", help="keep a command running (Procfile worker, beat)")
    p_respawn.add_argument("name", help="name used in the log lines")
    p_respawn.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    handlers = {
        "serve": cmd_serve,
        "test": cmd_test,
        "flower": cmd_flower,
        "respawn": cmd_respawn,
    }
    return handlers[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
