"""The Procfile's (and docker-compose's) process helpers: Flower behind its auth policy, and
a restart loop for the Celery worker and beat under honcho.

    python -m app.processes flower                   # Flower with the auth of VIBEBOX_ENV
    python -m app.processes respawn NAME -- CMD ...  # keep CMD running (Procfile worker, beat)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

BIN_DIR = Path(sys.executable).parent  # the venv's bin when run as .venv/bin/python


def say(message: str) -> None:
    print(f"[vibebox] {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> int:
    say(f"error: {message}")
    return code


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    return (env.get(name) or "").strip() or default


def tool(name: str) -> str:
    candidate = BIN_DIR / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def flower_auth_problem(env: Mapping[str, str]) -> str | None:
    """Why Flower must not start with this environment (None: fine)."""
    from app.config import ConfigError, FlowerSettings

    mode = _env(env, "VIBEBOX_ENV", "development")
    try:
        flower = FlowerSettings.from_env(env)
    except ConfigError as exc:
        return str(exc)
    if not flower.basic_auth and mode != "development":
        return (
            f"FLOWER_BASIC_AUTH (user:password) is required when VIBEBOX_ENV={mode}; "
            "Flower exposes task arguments and control of the workers"
        )
    return None


def port_problem(env: Mapping[str, str]) -> str | None:
    """One line naming the first port ``serve`` needs that is taken (PORT, FLOWER_PORT) and
    the variable to change; None when both are free. Binds like gunicorn (SO_REUSEADDR)."""
    host = _env(env, "HOST", "127.0.0.1")
    for variable, default in (("PORT", "5000"), ("FLOWER_PORT", "5555")):
        raw = _env(env, variable, default)
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            return f"{variable}={raw!r} is not a port number (1-65535)"
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, int(raw), type=socket.SOCK_STREAM
            )[0]
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except (OSError, UnicodeError) as exc:
            return (
                f"port {raw} on {host} ({variable}) is not available: "
                f"{getattr(exc, 'strerror', None) or exc}; stop what uses it or set "
                f"{variable} to a free port (e.g. {variable}={int(raw) + 1})"
            )
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
    from app.config import environment

    env = environment()
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
        return fail("respawn needs a command: python -m app.processes respawn NAME -- CMD ...", 2)
    return respawn(args.name, command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.processes", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("flower", help="start Flower (Procfile, docker-compose)")
    p_respawn = sub.add_parser("respawn", help="keep a command running (Procfile worker, beat)")
    p_respawn.add_argument("name", help="name used in the log lines")
    p_respawn.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return cmd_flower(args) if args.action == "flower" else cmd_respawn(args)


if __name__ == "__main__":
    sys.exit(main())
