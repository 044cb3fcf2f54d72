"""DEVELOPMENT TOOL: the offline demo ``make run`` starts in development (README "Offline demo").

With ``VIBEBOX_ENV=development`` (the default) and nothing configured, ``scripts/run.py serve``
starts, before the Procfile's processes:

1. a local Happy server (:mod:`app.devtools.happy_server`, in memory) when
   ``HAPPY_SERVER_URL`` is not set; the web and worker processes get its URL;
2. one demo box: an OpenSSH ``sshd`` on ``127.0.0.1:VIBEBOX_DEMO_SSH_PORT`` (default 2222)
   whose sessions have the development ``happy`` stand-in on their PATH and
   ``HAPPY_SERVER_URL`` pointing at that local server, registered in the pool through the
   normal pool-add service (host key pinned) under the label ``vibebox-demo``.

The product creates one Unix user per box through the pool login, so the login must be root
or allowed passwordless ``sudo -n``: as root the demo sshd runs as root with login ``root``
(loopback, key authentication only); otherwise as the current user when ``sudo -n true``
works; otherwise there is no demo box and the banner says why.

Anything configured explicitly turns the matching part off: ``HAPPY_SERVER_URL`` set -> no
local Happy server and no demo box (its ``happy`` stand-in talks only to the local server);
``VIBEBOX_DEMO=0`` -> neither; servers of your own in the pool -> neither (their daemons use
the real Happy server, so accounts must be made there). Production and
testing never start them. The dev payment provider is the configuration's default in
development (``PAYMENT_PROVIDERS`` unset; app/config.py).

Everything the demo keeps is under ``<VIBEBOX_VAR_DIR or ./var>/demo/``: the sshd host key
and the login key (both kept, so the pinned host key stays valid across runs), sshd_config,
the logs, and the box runtime (``happy`` + PyNaCl, readable by box users). :class:`Demo`
stops, by PID, only the processes it started.

Size (over 400 lines): a development tool, never imported by the product; it sets up a
whole local sshd box with its own keys and user.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_LABEL = "vibebox-demo"
DEFAULT_SSH_PORT = 2222
DEFAULT_HAPPY_PORT = 8765
DEMO_HOST = "127.0.0.1"
START_TIMEOUT = 30.0
OFF_VALUES = {"0", "false", "no", "off"}
# Exit status of `python -m app.devtools.demo register` when the pool holds servers of the
# operator's own (then there is no demo box).
EXIT_POOL_IN_USE = 3
PRIVILEGE_PROBLEM = (
    "no demo box: it needs root or passwordless sudo (sudo -n) to create one Unix user per "
    "box; run `make run` as root or allow passwordless sudo, or add a server of your own with "
    "`vibebox pool add` (VIBEBOX_DEMO=0 turns the demo off)"
)


class DemoError(RuntimeError):
    """A demo part could not be started (the stack still starts without it)."""


def _value(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _sudo_works() -> bool:
    if shutil.which("sudo") is None:
        return False
    try:
        result = subprocess.run(
            ["sudo", "-n", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


@dataclass(frozen=True)
class DemoPlan:
    """Which demo parts to start, and why not the others (pure function of the environment
    and this process's privileges: :func:`plan_demo`)."""

    happy_server: bool
    box: bool
    box_login: str | None = None  # "root" or the current user (passwordless sudo)
    reasons: tuple[str, ...] = ()  # one line per part that does not start, for the banner

    @property
    def anything(self) -> bool:
        return self.happy_server or self.box


def plan_demo(
    env: Mapping[str, str],
    *,
    euid: int | None = None,
    user: str | None = None,
    sudo_works: Any = _sudo_works,
) -> DemoPlan:
    """What ``make run`` starts of the demo with ``env`` (see the module doc for the rules)."""
    mode = (_value(env, "VIBEBOX_ENV") or "development").lower()
    if mode != "development":
        return DemoPlan(False, False)  # production and testing never start demo parts
    if _value(env, "VIBEBOX_DEMO").lower() in OFF_VALUES:
        return DemoPlan(False, False, reasons=("demo off (VIBEBOX_DEMO=0)",))
    if _value(env, "HAPPY_SERVER_URL"):
        return DemoPlan(
            False,
            False,
            reasons=("no demo box: HAPPY_SERVER_URL is set (the demo box needs the local one)",),
        )
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return DemoPlan(True, True, box_login="root")
    if sudo_works():
        return DemoPlan(True, True, box_login=user or getpass.getuser())
    return DemoPlan(True, False, reasons=(PRIVILEGE_PROBLEM,))


def demo_dir(env: Mapping[str, str], repo_root: Path) -> Path:
    var = _value(env, "VIBEBOX_VAR_DIR")
    return (Path(var) if var else repo_root / "var") / "demo"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _value(env, name)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise DemoError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise DemoError(f"{name} must be between 1 and 65535, got {port}")
    return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((DEMO_HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((DEMO_HOST, 0))
        return int(sock.getsockname()[1])


def fingerprint_of(public_key_line: str) -> str:
    """``SHA256:...`` of an OpenSSH public key line, as ``ssh-keygen -lf`` prints it."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _no_writable_parent(path: Path) -> bool:
    """No folder from / down to ``path`` is group- or world-writable (sshd's StrictModes)."""
    path = path.resolve()
    return all(not part.stat().st_mode & 0o022 for part in [path, *path.parents])


def _wait(predicate: Any, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _answers_http(port: int) -> bool:
    try:
        with socket.create_connection((DEMO_HOST, port), timeout=1) as sock:
            sock.sendall(b"GET /__double__/stats HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):  # the whole answer: the server then closes
                answer += chunk
            return answer.startswith(b"HTTP/")
    except OSError:
        return False


def _answers_ssh(port: int) -> bool:
    try:
        with socket.create_connection((DEMO_HOST, port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


@dataclass
class Demo:
    """The demo parts this process started (stopped by PID in :meth:`stop`)."""

    directory: Path
    python: str = sys.executable
    happy_url: str | None = None
    ssh_port: int | None = None
    box_login: str | None = None
    lines: list[str] = field(default_factory=list)  # banner lines
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _sshd: subprocess.Popen[bytes] | None = None
    _temp_runtime: Path | None = None

    # --- the local Happy server ------------------------------------------------------

    def start_happy_server(self, env: Mapping[str, str]) -> str:
        preferred = _port(env, "VIBEBOX_DEMO_HAPPY_PORT", DEFAULT_HAPPY_PORT)
        port = preferred if port_is_free(preferred) else free_port()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = self.directory / "happy-server.log"
        with log_path.open("ab") as log:
            log_path.chmod(0o600)
            process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "app.devtools.happy_server",
                    *("--port", str(port)),
                    *("--state-file", str(self.directory / "happy-server-state.json")),
                ],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches it through stop(), not twice
            )
        self._processes.append(process)
        if not _wait(lambda: _answers_http(port), process, START_TIMEOUT):
            raise DemoError(f"the local Happy server did not start (see {log_path})")
        self.happy_url = f"http://{DEMO_HOST}:{port}"
        self.lines.append(f"Happy server (local dev double) {self.happy_url}")
        return self.happy_url

    # --- the demo box ----------------------------------------------------------------

    @property
    def host_key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def login_key_path(self) -> Path:
        return self.directory / "login_ed25519_key"

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint_of(Path(f"{self.host_key_path}.pub").read_text())

    def start_box(self, env: Mapping[str, str], login: str, happy_url: str) -> None:
        """Keys (kept across runs), the box runtime, sshd_config, then ``sshd -D``."""
        from app.devtools.box_runtime import (
            BoxRuntime,
            generate_ed25519_key,
            readable_by_others,
            sshd_binary,
        )

        port = _port(env, "VIBEBOX_DEMO_SSH_PORT", DEFAULT_SSH_PORT)
        if not port_is_free(port):
            raise DemoError(
                f"no demo box: port {port} is taken; set VIBEBOX_DEMO_SSH_PORT to a free port "
                "(keep it stable: the pool row is keyed by it)"
            )
        sshd = sshd_binary()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        for key in (self.host_key_path, self.login_key_path):
            if not key.exists():
                generate_ed25519_key(key, DEMO_LABEL)
        authorized = self.directory / "authorized_keys"
        authorized.write_text(Path(f"{self.login_key_path}.pub").read_text())
        authorized.chmod(0o600)
        runtime_root = self.directory / "runtime"
        if not readable_by_others(self.directory.parent):
            # Box users cannot reach ./var/demo (e.g. a checkout under /root): a runtime of
            # this run's own under /tmp, removed on exit.
            self._temp_runtime = Path(tempfile.mkdtemp(prefix="vibebox-demo-runtime-"))
            self._temp_runtime.chmod(0o711)
            runtime_root = self._temp_runtime / "runtime"
        else:
            self.directory.chmod(0o711)  # box users pass through to runtime/ only
        runtime = BoxRuntime.prepare(runtime_root)
        box_env = runtime.env(happy_url)
        config = self.directory / "sshd_config"
        config.write_text(self._sshd_config(port, login, box_env))
        config.chmod(0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log_path = self.directory / "sshd.log"
        with log_path.open("ab") as log:
            log_path.chmod(0o600)  # box users pass through this folder
            process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._processes.append(process)
        self._sshd = process
        if not _wait(lambda: _answers_ssh(port), process, START_TIMEOUT):
            raise DemoError(f"no demo box: sshd did not start (see {log_path})")
        self.ssh_port = port
        self.box_login = login

    def _sshd_config(self, port: int, login: str, box_env: Mapping[str, str]) -> str:
        root = login == "root"
        return "\n".join(
            [
                "# Written by app/devtools/demo.py on every `make run`; edits are overwritten.",
                f"Port {port}",
                f"ListenAddress {DEMO_HOST}",
                f"HostKey {self.host_key_path}",
                "PidFile none",
                f"AllowUsers {login}",
                f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                # sshd refuses a key file below a group/world-writable folder (e.g. /tmp);
                # ours is written by us, 0600, in a folder of ours (0700/0711).
                f"StrictModes {'yes' if _no_writable_parent(self.directory) else 'no'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                f"PermitRootLogin {'prohibit-password' if root else 'no'}",
                "UsePAM no",
                "UseDNS no",
                "PrintMotd no",
                "MaxStartups 50",
                "LogLevel INFO",
                "Subsystem sftp internal-sftp",
                "SetEnv " + " ".join(f"{k}={v}" for k, v in box_env.items()),
                "",
            ]
        )

    def register_box(self, env: Mapping[str, str]) -> str:
        """Put the demo box in the pool (``python -m app.devtools.demo register`` with the
        stack's environment). Returns what it did; raises :class:`DemoError` when the pool
        holds servers of the operator's own or registration failed."""
        assert self.ssh_port is not None and self.box_login is not None
        result = subprocess.run(
            [
                self.python,
                "-m",
                "app.devtools.demo",
                "register",
                "--port",
                str(self.ssh_port),
                "--user",
                self.box_login,
                "--key-file",
                str(self.login_key_path),
                "--host-key-fingerprint",
                self.host_key_fingerprint,
            ],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        message = (result.stdout.strip() or result.stderr.strip()).splitlines()
        last = message[-1] if message else f"exit status {result.returncode}"
        if result.returncode != 0:
            raise DemoError(f"no demo box: {last}")
        self.lines.append(f"Demo box ssh {DEMO_HOST}:{self.ssh_port} (login {self.box_login})")
        return last

    def stop_box(self) -> None:
        """Stop the demo sshd only (e.g. when it could not be registered)."""
        if self._sshd is not None:
            self._stop(self._sshd)
            self._processes.remove(self._sshd)
            self._sshd = None
        self.ssh_port = None

    # --- lifecycle -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop what this object started, by PID, newest first. Box users the product
        created stay (the product's teardown removes them; README "Offline demo")."""
        while self._processes:
            self._stop(self._processes.pop())
        if self._temp_runtime is not None:
            shutil.rmtree(self._temp_runtime, ignore_errors=True)
            self._temp_runtime = None

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def own_servers(database_url: str) -> int:
    """Servers in the pool that are not the demo box (retired ones aside)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from app.config import normalize_database_url

    engine = create_engine(normalize_database_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            count = conn.scalar(
                text(
                    "SELECT count(*) FROM servers WHERE state <> 'retired'"
                    " AND (label IS NULL OR label <> :demo)"
                ),
                {"demo": DEMO_LABEL},
            )
    finally:
        engine.dispose()
    return int(count or 0)


def start_demo(
    env: Mapping[str, str], repo_root: Path, plan: DemoPlan, say: Any = print
) -> tuple[Demo, dict[str, str]]:
    """Start the parts ``plan`` asks for. Returns the demo (to :meth:`Demo.stop` on exit)
    and the variables the stack's processes need (``HAPPY_SERVER_URL``). A part that
    cannot start is skipped with its reason in ``demo.lines``; the stack still starts.

    Servers of the operator's own in the pool turn the whole demo off: their daemons talk
    to the real Happy server, so accounts must be made there too."""
    demo = Demo(demo_dir(env, repo_root))
    demo.lines.extend(plan.reasons)
    extra: dict[str, str] = {}
    database_url = _value(env, "DATABASE_URL")
    mine = own_servers(database_url) if database_url and plan.anything else 0
    if mine:
        demo.lines.append(
            f"no demo: the pool has {mine} server(s) of your own (they use HAPPY_SERVER_URL, "
            "default https://api.cluster-fluster.com)"
        )
        return demo, extra
    try:
        if plan.happy_server:
            say("demo: starting the local Happy server (development double)")
            extra["HAPPY_SERVER_URL"] = demo.start_happy_server(env)
        if plan.box and plan.box_login and demo.happy_url:
            say("demo: starting the demo box (sshd on loopback) and adding it to the pool")
            try:
                demo.start_box(env, plan.box_login, demo.happy_url)
                say(f"demo: {demo.register_box({**env, **extra})}")
            except (DemoError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                demo.stop_box()
                text = str(exc) if str(exc).startswith("no demo box") else f"no demo box: {exc}"
                demo.lines.append(text)
                say(f"demo: {text}")
    except BaseException:
        demo.stop()
        raise
    return demo, extra


# --------------------------------------------------------------------------- register


def register_demo_server(
    session: Any,
    *,
    port: int,
    user: str,
    private_key: str,
    host_key_fingerprint: str,
    encryption_key: bytes,
    allowed_networks: Any = None,
) -> str:
    """Add the demo box to the pool, or reuse / re-pin its row. Raises DemoError when the
    pool holds servers that are not the demo box (then there is no demo box)."""
    from sqlalchemy import func, select

    from app.models import Plan
    from app.services import pool

    servers = [s for s in pool.list_servers(session) if s.state != "retired"]
    others = [s for s in servers if s.label != DEMO_LABEL]
    if others:
        raise DemoError(
            f"the pool has {len(others)} server(s) of your own; the demo box is only added "
            "to an empty pool"
        )
    for server in [s for s in servers if s.label == DEMO_LABEL]:
        if (server.host, server.ssh_port, server.ssh_user) != (DEMO_HOST, port, user):
            pool.remove_server(session, server.id)  # an earlier demo box on another port/login
            continue
        target = pool.ssh_target_for(server, encryption_key)
        if (
            target.host_key_fingerprint == host_key_fingerprint
            and target.private_key == private_key
        ):
            return f"demo box reused (server {server.id}, state {server.state})"
        pool.repin_server(
            session,
            server.id,
            private_key=private_key,
            host_key_fingerprint=host_key_fingerprint,
            encryption_key=encryption_key,
        )
        return f"demo box keys changed under var/demo: server {server.id} re-pinned"
    # Nominal resources: the demo box takes any plan (its boxes are Unix users here).
    largest = session.execute(
        select(func.max(Plan.cpu_cores), func.max(Plan.ram_gb), func.max(Plan.disk_gb))
    ).one()
    server = pool.add_server(
        session,
        pool.ServerSpec(
            host=DEMO_HOST,
            port=port,
            user=user,
            private_key=private_key,
            host_key_fingerprint=host_key_fingerprint,
            cpu_cores=largest[0] or 1,
            ram_gb=largest[1] or 1,
            disk_gb=largest[2] or 1,
            label=DEMO_LABEL,
        ),
        encryption_key=encryption_key,
        allowed_networks=allowed_networks,
    )
    return (
        f"demo box added to the pool (server {server.id}, host key {server.host_key_fingerprint})"
    )


def _cmd_register(args: argparse.Namespace) -> int:
    from app import create_app, get_settings
    from app.db import db_session
    from app.errors import VibeBoxError

    app = create_app()
    with app.app_context():
        settings = get_settings()
        session = db_session()
        try:
            message = register_demo_server(
                session,
                port=args.port,
                user=args.user,
                private_key=Path(args.key_file).read_text(),
                host_key_fingerprint=args.host_key_fingerprint,
                encryption_key=settings.encryption_key,
                allowed_networks=settings.limits.pool_allowed_networks,
            )
            session.commit()
        except DemoError as exc:
            session.rollback()
            print(str(exc), flush=True)
            return EXIT_POOL_IN_USE
        except VibeBoxError as exc:
            session.rollback()
            print(f"{exc.message} [{exc.code}]", flush=True)
            return 1
        finally:
            db_session.remove()
    print(message, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.devtools.demo", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    reg = sub.add_parser("register", help="add the demo box to the pool (or reuse its row)")
    reg.add_argument("--port", type=int, required=True)
    reg.add_argument("--user", required=True)
    reg.add_argument("--key-file", required=True)
    reg.add_argument("--host-key-fingerprint", required=True)
    args = parser.parse_args(argv)
    return _cmd_register(args)


if __name__ == "__main__":
    sys.exit(main())
