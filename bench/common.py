"""Shared pieces of the benchmarks: statistics, the scratch database and Redis db, machine
facts, and the provisioning measurement (system through the HTTP API vs the same raw remote
work done by a plain script). ``provision.py`` drives it against an in-process app and a test
worker; ``stack.py`` against the ``make run`` stack over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"
POLL_SECONDS = 0.02  # both sides poll at this fixed rate
RUN_TIMEOUT = 60.0  # one box, either side
BATCH_TIMEOUT = 180.0  # N boxes, either side
PLAN = "basic"
SERVER_RESOURCES = {"cpu_cores": 2, "ram_gb": 4, "disk_gb": 40}  # fits the basic plan
REDIS_OWNER_KEY = "vibebox:bench:owner"
BREAKDOWN_KEYS = (
    "to_first_step_s",
    "create_happy_account_s",
    "hop_allocate_server_s",
    "allocate_server_s",
    "hop_configure_server_s",
    "configure_server_s",
    "hop_start_daemon_s",
    "start_daemon_s",
    "hop_mark_running_s",
    "mark_running_s",
    "detect_s",
)
BASELINE_KEYS = (
    "create_account_s",
    "ssh_connect_s",
    "create_user_s",
    "write_credentials_s",
    "start_daemon_s",
    "read_machine_id_s",
    "poll_running_s",
)
CPU_KEYS = ("machine_cpu_s", "bench_process_cpu_s", "worker_cpu_s")
STEP_NAMES = (
    "create_happy_account",
    "allocate_server",
    "configure_server",
    "start_daemon",
    "mark_running",
)


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (not a slow result)."""


class CorrectnessError(BenchError):
    """A benchmark's correctness check failed: the run exits 1 (never for a timing)."""


def guarded_main(run: Callable[[], int], script: str) -> int:
    """What every benchmark with sshd boxes does around its run: needs DATABASE_URL and
    REDIS_URL and root; SIGTERM/SIGHUP stop it like Ctrl-C (everything started is stopped
    by the run's ExitStack); a ``BenchError`` is exit 1."""
    missing = [n for n in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(n)]
    if missing:
        print(
            f"error: {' and '.join(missing)} not set. The benchmark needs a PostgreSQL and a "
            "Redis server; for embedded ones run:\n"
            f"  python scripts/services.py exec -- .venv/bin/python bench/{script}",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print("error: the sshd boxes need root (useradd, sshd)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_term)
    try:
        return run()
    except KeyboardInterrupt:
        log("interrupted; everything this run started has been stopped")
        return 130
    except CorrectnessError as exc:
        log(f"CORRECTNESS CHECK FAILED: {exc}")
        return 1
    except BenchError as exc:
        log(f"error: {exc}")
        return 1


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _on_term(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- statistics -----------------------------------------------------------------------------


def summary(seconds: list[float]) -> dict[str, float | int]:
    """Milliseconds: median, p90, min, max, mean."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"n": 0}
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[8] if len(ms) > 1 else ms[0]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(p90, 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return round(statistics.median(values) * 1000, 1) if values else None


def poll_until(
    check: Callable[[], bool], *, timeout: float, what: str, period: float = POLL_SECONDS
) -> int:
    """Call ``check`` at a fixed rate of one call per ``period`` until it returns True;
    return how many calls it took."""
    started = time.perf_counter()
    next_at = started
    polls = 0
    while True:
        polls += 1
        if check():
            return polls
        now = time.perf_counter()
        if now - started > timeout:
            raise BenchError(f"{what}: not done after {timeout:.0f}s")
        next_at += period
        if next_at > now:
            time.sleep(next_at - now)
        else:
            next_at = now  # a slow check: do not burst to catch up


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(stat_path: Path) -> tuple[int, int, float]:
    """(process group, session, CPU seconds) of one /proc/<pid>/stat."""
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _proc_cpu(stat_path: Path) -> tuple[int, float]:
    """(process group, CPU seconds) of one /proc/<pid>/stat."""
    pgid, _session, seconds = _proc_stat(stat_path)
    return pgid, seconds


def session_cpu_seconds(session_id: int) -> float:
    """CPU seconds used so far by the live processes of one session (a process started
    with ``start_new_session`` and everything it started)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                _pgid, session, seconds = _proc_stat(proc / "stat")
                if session == session_id:
                    total += seconds
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: the whole machine (all cores), this process (the API poller,
    the in-process Happy double, the baseline script) and the worker's process group."""

    machine: float
    bench: float
    worker: float

    @classmethod
    def take(cls, worker_pgid: int | None) -> CpuSnapshot:
        busy = 0.0
        with contextlib.suppress(OSError):
            cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            # user nice system idle iowait irq softirq steal: everything but idle + iowait
            busy = sum(int(v) for i, v in enumerate(cpu[:8]) if i not in (3, 4)) / _CLK_TCK
        worker = 0.0
        if worker_pgid is not None:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        pgid, seconds = _proc_cpu(proc / "stat")
                        if pgid == worker_pgid:
                            worker += seconds
        return cls(machine=busy, bench=time.process_time(), worker=worker)

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        return {
            "machine_cpu_s": round(self.machine - earlier.machine, 3),
            "bench_process_cpu_s": round(self.bench - earlier.bench, 3),
            "worker_cpu_s": round(self.worker - earlier.worker, 3),
        }


# --- the scratch environment -----------------------------------------------------------------


@dataclass
class Scratch:
    database_url: str
    database_name: str
    redis_url: str


def _redis_url_with_db(url: str, db: int) -> str:
    head, _, tail = url.rpartition("/")
    root = head if tail.isdigit() and head.count("/") >= 2 else url.rstrip("/")
    return f"{root}/{db}"


def create_scratch(stack: contextlib.ExitStack, redis_db: int) -> Scratch:
    """A scratch database (dropped at the end) and an empty Redis db (flushed at the end)."""
    import redis
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.config import normalize_database_url

    base = make_url(normalize_database_url(os.environ["DATABASE_URL"]))
    prefix = f"{base.database or 'vibebox'}_bench_"
    name = f"{prefix}{os.getpid()}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    stack.callback(admin.dispose)
    with admin.connect() as conn:
        existing = conn.scalars(
            text("SELECT datname FROM pg_database WHERE starts_with(datname, :p)"), {"p": prefix}
        ).all()
        for stale in existing:  # left by a bench run that was killed
            owner = stale[len(prefix) :]
            if owner.isdigit() and not psutil.pid_exists(int(owner)):
                log(f"dropping stale scratch database {stale}")
                conn.execute(text(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop_database() -> None:
        from app.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        log(f"dropped scratch database {name}")

    stack.callback(drop_database)

    redis_url = _redis_url_with_db(os.environ["REDIS_URL"], redis_db)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    stack.callback(client.close)
    owner = client.get(REDIS_OWNER_KEY)
    stale_bench = owner is not None and owner.isdigit() and not psutil.pid_exists(int(owner))
    if client.dbsize() and not stale_bench:
        raise BenchError(
            f"Redis db {redis_db} at {redis_url.rpartition('/')[0]} is not empty: another "
            "program uses it. Pick an unused one with --redis-db N."
        )
    client.flushdb()
    client.set(REDIS_OWNER_KEY, str(os.getpid()))
    stack.callback(client.flushdb)

    url = base.set(database=name).render_as_string(hide_password=False)
    return Scratch(database_url=url, database_name=name, redis_url=redis_url)


def migrate(database_url: str) -> None:
    from alembic import command

    from app.services.readiness import alembic_config

    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def machine_info(engine: Any, redis_url: str) -> dict[str, Any]:
    import redis
    from sqlalchemy import text

    def cmd(*args: str) -> str:
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (result.stdout or result.stderr).strip()

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with engine.connect() as conn:
        postgres = conn.scalar(text("SHOW server_version"))
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server").get("redis_version")
    finally:
        client.close()
    return {
        "nproc": cmd("nproc"),
        "cpu_model": cpu_model,
        "free_g": cmd("free", "-g"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": postgres,
        "redis": redis_version,
        "openssh": cmd("ssh", "-V"),
    }


# --- the API under test --------------------------------------------------------------------


@dataclass
class ApiResponse:
    status: int
    body: Any  # parsed JSON, or None
    text: str


class TestClientApi:
    """The Flask app in this process, through its test client (``provision.py``)."""

    def __init__(self, app: Any) -> None:
        self._client = app.test_client()

    def _wrap(self, response: Any) -> ApiResponse:
        return ApiResponse(
            response.status_code, response.get_json(silent=True), response.get_data(as_text=True)
        )

    def post(self, path: str, *, json: Any, headers: dict[str, str]) -> ApiResponse:
        return self._wrap(self._client.post(path, json=json, headers=headers))

    def get(self, path: str, *, headers: dict[str, str]) -> ApiResponse:
        return self._wrap(self._client.get(path, headers=headers))


class HttpApi:
    """A server over HTTP (``stack.py``: the ``make run`` stack's gunicorn), keep-alive."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _wrap(self, response: Any) -> ApiResponse:
        try:
            body = response.json()
        except ValueError:
            body = None
        return ApiResponse(response.status_code, body, response.text)

    def post(self, path: str, *, json: Any, headers: dict[str, str]) -> ApiResponse:
        return self._wrap(
            self._session.post(
                self.base_url + path, json=json, headers=headers, timeout=self.timeout
            )
        )

    def get(self, path: str, *, headers: dict[str, str]) -> ApiResponse:
        return self._wrap(
            self._session.get(self.base_url + path, headers=headers, timeout=self.timeout)
        )


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Bench:
    app: Any
    engine: Any
    settings: Any
    double: Any
    worker_log: str
    worker_pgid: int | None = None
    status_poll_seconds: float = POLL_SECONDS
    api: Any = None  # TestClientApi or HttpApi; None: the app's test client
    admin_headers: dict[str, str] = field(default_factory=dict)
    server_ids: dict[str, uuid.UUID] = field(default_factory=dict)  # box user -> server id

    # -- setup helpers --

    def make_user(self, *, admin: bool = False) -> tuple[uuid.UUID, dict[str, str]]:
        from flask_jwt_extended import create_access_token
        from sqlalchemy.orm import Session

        from app.models import User

        tag = uuid.uuid4().hex[:12]
        with Session(self.engine) as session:
            user = User(
                username=f"bench_{tag}",
                email=f"bench_{tag}@example.com",
                password_hash=None,
                auth_provider="local",
                is_admin=admin,
            )
            session.add(user)
            session.commit()
            user_id = user.id
        with self.app.app_context():
            token = create_access_token(identity=str(user_id))
        return user_id, {"Authorization": f"Bearer {token}"}

    def admit(self, boxes: list[Any]) -> None:
        """Admit sshd boxes to the pool through the pool service (real SSH admission)."""
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            for box in boxes:
                self.server_ids[box.user] = self.admit_box(session, box, f"bench-{box.user}")
            session.commit()

    def admit_box(self, session: Any, box: Any, label: str) -> uuid.UUID:
        """Admit one sshd box (``pool.add_server``: real SSH admission) in ``session``, with
        the basic plan's resources; the new server's id (the caller commits)."""
        from app.services import pool

        server = pool.add_server(
            session,
            box.server_spec(label=label, **SERVER_RESOURCES),
            encryption_key=self.settings.encryption_key,
            happy_server_url=self.settings.happy_server_url,
        )
        return server.id

    def _session(self, box: Any) -> Any:
        from app.integrations.ssh import BoxSession

        p = self.settings.provisioning
        return BoxSession(
            box.target(),
            connect_timeout=p.ssh_connect_timeout_seconds,
            command_timeout=p.ssh_command_timeout_seconds,
        )

    # -- resets (outside every timed region) --

    def reset_remote(self, boxes: list[Any]) -> None:
        """Remove every box user (the product's and the baseline's) from each server."""
        from app.integrations.box_host import BoxHost

        def reset(box: Any) -> None:
            with self._session(box) as s:
                host = BoxHost(s, default_happy_server_url=self.double.url)
                for user in host.box_users(str(self.server_ids[box.user])):
                    host.remove_user(user)

        with ThreadPoolExecutor(max_workers=min(8, len(boxes))) as pool:
            list(pool.map(reset, boxes))

    def reset_rows(self, box_ids: list[uuid.UUID], user_ids: list[uuid.UUID]) -> None:
        """Forget the boxes (and their users' Happy accounts); every server is free again.
        A worker still busy with these boxes (an interrupted run) can deadlock the DELETE:
        tried again, a few times."""
        from sqlalchemy.exc import OperationalError

        for attempt in range(3):
            try:
                self._delete_rows(box_ids, user_ids)
                return
            except OperationalError:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def _delete_rows(self, box_ids: list[uuid.UUID], user_ids: list[uuid.UUID]) -> None:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM provisioning_steps WHERE vibebox_id = ANY(:ids)"),
                {"ids": box_ids},
            )
            conn.execute(text("DELETE FROM vibeboxes WHERE id = ANY(:ids)"), {"ids": box_ids})
            conn.execute(
                text("DELETE FROM happy_accounts WHERE user_id = ANY(:ids)"), {"ids": user_ids}
            )
            conn.execute(
                text(
                    "UPDATE servers SET state = 'available', consecutive_failures = 0,"
                    " last_error = NULL WHERE state <> 'available'"
                )
            )

    # -- the system: HTTP API + worker + DB --

    def run_system(self, n_users: int, timeout: float) -> dict[str, Any]:
        """Provision one box for each of ``n_users`` fresh users; poll until all run."""
        users = [self.make_user() for _ in range(n_users)]
        client = self.api or TestClientApi(self.app)
        pending: dict[str, dict[str, str]] = {}
        seen: dict[str, float] = {}
        docs: dict[str, dict[str, Any]] = {}
        accepted: list[float] = []

        cpu0 = CpuSnapshot.take(self.worker_pgid)
        wall0 = time.time()
        t0 = time.perf_counter()
        for user_id, headers in users:
            response = client.post(
                "/api/admin/provision",
                json={"userId": str(user_id), "planId": PLAN},
                headers=self.admin_headers,
            )
            accepted.append(time.perf_counter())
            if response.status != 202:
                raise BenchError(f"provision answered {response.status}: {response.text}")
            pending[response.body["vibeBox"]["id"]] = headers

        def all_running() -> bool:
            for box_id, headers in list(pending.items()):
                response = client.get(f"/api/vibeboxes/{box_id}", headers=headers)
                if response.status != 200:
                    raise BenchError(f"status poll answered {response.status}: {response.text}")
                doc = response.body["vibeBox"]
                if doc["status"] == "running":
                    seen[box_id] = time.perf_counter()
                    docs[box_id] = doc
                    del pending[box_id]
                elif doc["status"] == "error":
                    raise BenchError(
                        f"box {box_id} failed at {doc['step']}: {doc['lastError']} "
                        f"(worker log: {self.worker_log})"
                    )
            return not pending

        try:
            polls = poll_until(
                all_running,
                timeout=timeout,
                what=f"{n_users} box(es) running",
                period=self.status_poll_seconds,
            )
            cpu = CpuSnapshot.take(self.worker_pgid).since(cpu0)
        finally:
            self.reset_rows([uuid.UUID(b) for b in (*pending, *docs)], [u for u, _ in users])
        t_end = max(seen.values())
        breakdowns = [
            _timeline_breakdown(docs[b], wall0, t0, seen[b]) for b in sorted(docs, key=seen.get)
        ]
        return {
            "from_request_s": t_end - t0,
            "from_accept_s": t_end - accepted[0],
            "accept_s": accepted[0] - t0,
            "all_accepted_s": accepted[-1] - t0,
            "polls": polls,
            **cpu,
            # Independent of how often we poll: the last box's last step committed.
            "last_step_done_s": max(b.get("last_step_done_s", 0.0) for b in breakdowns),
            "step_attempts": sum(b["attempts"] for b in breakdowns),
            "boxes": breakdowns,
        }

    # -- the baseline: the same remote work, done by a plain script --

    def raw_work_alone(self, box: Any) -> dict[str, Any]:
        cpu0 = CpuSnapshot.take(self.worker_pgid)
        result = self.raw_work(box)
        return {**result, **CpuSnapshot.take(self.worker_pgid).since(cpu0)}

    def raw_work(self, box: Any) -> dict[str, Any]:
        from app.integrations.box_host import BoxHost, BoxUser, box_gecos
        from app.integrations.happy import HappyClient, HappyCredentials, generate_secret

        p = self.settings.provisioning
        session = self._session(box)  # builds the pinned target; connects on enter
        name = p.box_user_prefix + uuid.uuid4().hex[:12]
        gecos = box_gecos(f"bench-{name}", str(self.server_ids[box.user]))
        t0 = time.perf_counter()
        happy = HappyClient(
            self.double.url, timeout=(min(3.05, p.happy_timeout_seconds), p.happy_timeout_seconds)
        )
        secret = generate_secret()
        token = happy.create_account(secret)
        t_account = time.perf_counter()
        with session as s:
            host = BoxHost(s, default_happy_server_url=self.double.url)
            t_connected = time.perf_counter()
            host.check_operator()
            user = BoxUser(name, host.ensure_user(BoxUser(name), gecos))
            t_user = time.perf_counter()
            host.write_credentials(user, HappyCredentials(secret=secret, token=token))
            t_written = time.perf_counter()
            if host.start_daemon(user, timeout=p.ssh_command_timeout_seconds).exit_status:
                raise BenchError(f"{box.user}: `happy daemon start` failed")
            t_started = time.perf_counter()
            machine_id = host.read_machine_id(user)
            t_read = time.perf_counter()
        if not machine_id:
            raise BenchError(f"{box.user}: no machine id after `happy daemon start`")

        def running() -> bool:
            return any(
                m.id == machine_id and m.daemon_status == "running"
                for m in happy.list_machines(token, secret)
            )

        polls = poll_until(running, timeout=RUN_TIMEOUT, what=f"{box.user} daemon running")
        t_end = time.perf_counter()
        return {
            "total_s": t_end - t0,
            "create_account_s": t_account - t0,
            "ssh_connect_s": t_connected - t_account,
            "create_user_s": t_user - t_connected,
            "write_credentials_s": t_written - t_user,
            "start_daemon_s": t_started - t_written,
            "read_machine_id_s": t_read - t_started,
            "poll_running_s": t_end - t_read,
            "polls": polls,
        }

    def run_baseline_batch(self, boxes: list[Any], concurrency: int) -> dict[str, Any]:
        cpu0 = CpuSnapshot.take(self.worker_pgid)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(self.raw_work, boxes))
        t_end = time.perf_counter()
        cpu = CpuSnapshot.take(self.worker_pgid).since(cpu0)
        return {"from_request_s": t_end - t0, **cpu, "boxes": results}


def _parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _timeline_breakdown(
    doc: dict[str, Any], wall0: float, t0: float, seen_at: float
) -> dict[str, Any]:
    """Where one box's time went (seconds), from the steps' timestamps in its status document.

    ``to_first_step``: request sent -> first step claimed (API commit + publish + pickup);
    ``<step>``: claimed -> succeeded; ``hop_<step>``: previous step succeeded -> this one
    claimed (commit, next task published by the chain, picked up); ``detect``: last step
    succeeded -> a poll saw ``running``. Timestamps are wall clock on the same machine.
    """
    timeline = {s["name"]: s for s in doc["timeline"]}
    out: dict[str, Any] = {
        "seen_running_s": seen_at - t0,
        "attempts": sum(int(s["attempts"]) for s in doc["timeline"]),
    }
    previous_end: float | None = None
    for name in STEP_NAMES:
        step = timeline.get(name, {})
        started, finished = _parse_ts(step.get("startedAt")), _parse_ts(step.get("finishedAt"))
        if started is None or finished is None:
            continue
        if previous_end is None:
            out["to_first_step_s"] = started - wall0
        else:
            out[f"hop_{name}_s"] = started - previous_end
        out[f"{name}_s"] = finished - started
        previous_end = finished
    if previous_end is not None:
        out["last_step_done_s"] = previous_end - wall0  # wall0 was taken together with t0
        out["detect_s"] = (seen_at - t0) - out["last_step_done_s"]
    return out


# --- the two parts -----------------------------------------------------------------------------


def part_a(bench: Bench, box: Any, runs: int, warmup: int) -> dict[str, Any]:
    """One box end to end, system and baseline interleaved (order alternating)."""
    system: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for i in range(warmup + runs):
        order = ("system", "baseline") if i % 2 == 0 else ("baseline", "system")
        line = []
        for kind in order:
            if kind == "system":
                result = bench.run_system(1, RUN_TIMEOUT)
                value = result["from_accept_s"]
            else:
                result = bench.raw_work_alone(box)
                value = result["total_s"]
            bench.reset_remote([box])
            if i >= warmup:
                (system if kind == "system" else baseline).append(result)
            line.append(f"{kind} {value * 1000:.0f} ms")
        label = f"warm-up {i + 1}/{warmup}" if i < warmup else f"run {i - warmup + 1}/{runs}"
        log(f"(a) {label}: {', '.join(line)}")

    sys_accept = [r["from_accept_s"] for r in system]
    sys_request = [r["from_request_s"] for r in system]
    base = [r["total_s"] for r in baseline]
    sys_boxes = [r["boxes"][0] for r in system]
    return {
        "runs": runs,
        "warmup": warmup,
        "system_from_accept": summary(sys_accept),
        "system_from_request": summary(sys_request),
        "post_latency": summary([r["accept_s"] for r in system]),
        "baseline": summary(base),
        "ratio": round(statistics.median(sys_accept) / statistics.median(base), 2),
        "ratio_from_request": round(statistics.median(sys_request) / statistics.median(base), 2),
        "system_last_step_done": summary([r["last_step_done_s"] for r in system]),
        "system_breakdown_median_ms": {k: median_of(sys_boxes, k) for k in BREAKDOWN_KEYS},
        "system_step_attempts": [r["step_attempts"] for r in system],
        "cpu_median_ms": {
            "system": {k: median_of(system, k) for k in CPU_KEYS},
            "baseline": {k: median_of(baseline, k) for k in CPU_KEYS},
        },
        "baseline_breakdown_median_ms": {k: median_of(baseline, k) for k in BASELINE_KEYS},
        "system_samples": system,
        "baseline_samples": baseline,
    }


def part_b(bench: Bench, boxes: list[Any], concurrency: int, reps: int, warmup: int) -> dict:
    """N boxes on N servers: the worker vs a thread pool at the same concurrency."""
    n = len(boxes)
    system: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for i in range(warmup + reps):
        order = ("system", "baseline") if i % 2 == 0 else ("baseline", "system")
        line = []
        for kind in order:
            if kind == "system":
                result = bench.run_system(n, BATCH_TIMEOUT)
            else:
                result = bench.run_baseline_batch(boxes, concurrency)
            bench.reset_remote(boxes)
            if i >= warmup:
                (system if kind == "system" else baseline).append(result)
            line.append(f"{kind} {result['from_request_s'] * 1000:.0f} ms")
        label = f"warm-up {i + 1}/{warmup}" if i < warmup else f"rep {i - warmup + 1}/{reps}"
        log(f"(b) {label}: {', '.join(line)}")

    sys_total = [r["from_request_s"] for r in system]
    base_total = [r["from_request_s"] for r in baseline]
    sys_median, base_median = statistics.median(sys_total), statistics.median(base_total)
    return {
        "boxes": n,
        "concurrency": concurrency,
        "reps": reps,
        "warmup": warmup,
        "system": summary(sys_total),
        "baseline": summary(base_total),
        "ratio": round(sys_median / base_median, 2),
        "system_boxes_per_s": round(n / sys_median, 2),
        "baseline_boxes_per_s": round(n / base_median, 2),
        "system_all_accepted": summary([r["all_accepted_s"] for r in system]),
        "system_last_step_done": summary([r["last_step_done_s"] for r in system]),
        # Per box, over all boxes of all repetitions.
        "system_breakdown_median_ms": {
            k: median_of([box for r in system for box in r["boxes"]], k) for k in BREAKDOWN_KEYS
        },
        "baseline_breakdown_median_ms": {
            k: median_of([box for r in baseline for box in r["boxes"]], k) for k in BASELINE_KEYS
        },
        "system_step_attempts": [r["step_attempts"] for r in system],
        "cpu_median_ms": {
            "system": {k: median_of(system, k) for k in CPU_KEYS},
            "baseline": {k: median_of(baseline, k) for k in CPU_KEYS},
        },
        "system_samples": system,
        "baseline_samples": baseline,
    }
