#!/usr/bin/env python3
"""``make run`` (serve: migrations, the offline demo, then the Procfile under honcho) and
``make test`` (test: pytest -n auto $PYTEST_ARGS), on the services of scripts/services.py:
those of DATABASE_URL/REDIS_URL when set, else embedded ones under var/, released on exit."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote

import services

from app.config import environment
from app.devtools.supervisor import supervise
from app.processes import BIN_DIR, _env, fail, flower_auth_problem, port_problem, say, tool

REPO_ROOT = Path(__file__).resolve().parent.parent
# `release` runs before, not beside. Two workers: threads for provisioning (README).
PROCFILE_PROCESSES = ("web", "worker", "maintenance", "beat", "flower")


def app_environment(*, dotenv: bool = True) -> dict[str, str]:
    """The environment plus the non-empty values of ``.env`` (the environment wins)."""
    env = {**(environment() if dotenv else os.environ), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.pathsep.join([str(BIN_DIR), env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def banner(env: Mapping[str, str], demo_lines: Sequence[str] = ()) -> str:
    from sqlalchemy.engine import make_url

    host = _env(env, "HOST", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - display only
    api = f"http://{host}:{_env(env, 'PORT', '5000')}"
    auth = "basic auth" if (env.get("FLOWER_BASIC_AUTH") or "").strip() else "no auth"
    names = [n.strip() for n in (env.get("PAYMENT_PROVIDERS") or "").split(",") if n.strip()]
    payments = ", ".join(names) + (" (dev: pay on the dev checkout page)" if "dev" in names else "")
    if not names:
        dev = _env(env, "VIBEBOX_ENV", "development") == "development"
        payments = "dev provider (pay on the dev checkout page)" if dev else "none enabled"
        payments += "" if dev else " (set PAYMENT_PROVIDERS)"
    return "\n".join(
        [
            f"VibeBox ({_env(env, 'VIBEBOX_ENV', 'development')}) is starting:",
            f"  API         {api}/\n  API docs    {api}/docs",
            f"  Flower      http://{host}:{_env(env, 'FLOWER_PORT', '5555')}/  ({auth})",
            f"  PostgreSQL  {unquote(make_url(env['DATABASE_URL']).render_as_string())}",
            f"  Redis       {make_url(env['REDIS_URL']).render_as_string()}",
            f"  Payments: {payments}",
            *(f"  {line}" for line in demo_lines),
            "  Ctrl-C stops everything started here.",
        ]
    )


def serve() -> int:
    from app.devtools import demo as demo_tools

    env = app_environment()
    problem = flower_auth_problem(env) or port_problem(env)
    if problem:
        return fail(problem)
    os.chdir(REPO_ROOT)
    # Metric files of an earlier run's processes are not this run's: start empty.
    metrics = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or REPO_ROOT / "var" / "prometheus")
    metrics.mkdir(parents=True, exist_ok=True)  # var/ also keeps beat's schedule
    for stale in metrics.glob("*.db"):
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    demo = None
    try:
        with services.running_services("run", environ=env) as urls:
            env.update(urls)
            say("applying migrations: vibebox db upgrade")
            status = supervise([tool("vibebox"), "db", "upgrade"], env)
            if status != 0:
                return fail(f"vibebox db upgrade failed (exit {status})", status)
            plan = demo_tools.plan_demo(env)  # the parts of the offline demo env leaves open
            demo, extra = demo_tools.start_demo(env, REPO_ROOT, plan, say=say)
            env.update(extra)
            print(banner(env, demo.lines), flush=True)
            # --env /dev/null: .env is merged already (the environment winning); honcho hands
            # the first process PORT, and stops its processes within 5 s of a signal.
            honcho = [tool("honcho"), "start", "-f", "Procfile", "--app-root", str(REPO_ROOT)]
            honcho += ["--env", os.devnull, "--port", _env(env, "PORT", "5000")]
            return supervise([*honcho, *PROCFILE_PROCESSES], env, kill_after=20.0)
    except KeyboardInterrupt:
        return 130
    except (services.ServiceError, demo_tools.DemoError) as exc:
        return fail(str(exc))
    finally:
        if demo is not None:
            demo.stop()  # by PID, what start_demo started; box users stay (README)


def run_tests() -> int:
    # Not .env: it describes the development stack, and tests must never get its database.
    env = {"VIBEBOX_ENV": "testing", **app_environment(dotenv=False)}
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
            say(f"running {shlex.join(command[1:])}")
            status = supervise(command, {**env, **urls}, cwd=REPO_ROOT)
    except KeyboardInterrupt:
        return 130
    except services.ServiceError as exc:
        return fail(str(exc))
    if status == 5:  # pytest collected no tests: counted as a failure
        return fail("pytest collected no tests", 1)
    return status


if __name__ == "__main__":
    commands = {"serve": serve, "test": run_tests}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(fail(f"usage: run.py {'|'.join(commands)}", 2))
    sys.exit(commands[sys.argv[1]]())
