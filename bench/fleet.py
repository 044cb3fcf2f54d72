#!/usr/bin/env python3
"""Issue 15's fleet run: N boxes (default 500) on N real sshd servers on 127.0.0.1, paid
through the dev provider's webhook, provisioned by the ``make run`` stack with workers scaled
out (``make bench-fleet``).

- Stack: ``scripts/run.py serve`` (the Procfile's web, worker, maintenance, beat, Flower,
  shipped defaults, as ``bench/stack.py`` starts it) plus ``--workers`` more provisioning
  workers: the Procfile's ``worker`` line with another node name (``-n worker2@%h``, ...),
  as the Procfile's scaling note documents. The Happy server is the project's development
  server (``python -m app.devtools.happy_server``) in its own process.
- Servers: ``BoxFleet`` sshd boxes (one ``sshd -D`` per server: own port, host key, login
  user) admitted through ``pool.add_server`` (real SSH admission), in parallel.
- Orders: one user and one dev-provider checkout per box through the API (untimed), then
  every completion webhook in one burst (``--connections``), the path a paying customer
  takes. Paid-to-running per box = ``payment_events.received_at`` -> ``mark_running``
  finished (database timestamps, so the bench's own polling does not count).
- Load: PostgreSQL ``pg_stat_database`` of the scratch database (+ backends sampled each
  second), Redis ``INFO`` (commands processed, memory, clients), CPU seconds per process
  kind from /proc, RSS/PSS of sshd and of the ``happy`` daemon stand-ins, and per step
  durations and queue hops from ``provisioning_steps``.

Bounded by ``--timeout`` (seconds, the whole run); stops everything it started by PID at
the end and on Ctrl-C/SIGTERM; removes every Unix user it (and the product) created.
Results: ``bench/results/fleet-<stamp>.json`` (git-ignored) and ``bench/results/fleet.png``.

    python scripts/services.py exec -- .venv/bin/python bench/fleet.py [--boxes 500] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import signal
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path set-up
    RESULTS_DIR,
    STEP_NAMES,
    Bench,
    BenchError,
    CorrectnessError,
    HttpApi,
    create_scratch,
    guarded_main,
    log,
    machine_info,
)
from bench.fleet_stats import (  # noqa: E402
    cpu_by_kind,
    memory_of,
    percentiles,
    step_breakdown,
)
from bench.loadgen import Request, run_load  # noqa: E402
from bench.stack import Process, free_port, stack_environment, wait_http  # noqa: E402

PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_read",
    "blks_hit",
    "deadlocks",
)
REDIS_COUNTERS = ("total_commands_processed", "total_connections_received", "total_net_input_bytes")


class Deadline(BenchError):
    """The run's hard time limit passed."""


def procfile_worker_line(name: str) -> str:
    """The Procfile's ``worker`` command with the node name ``name@%h``."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("worker:"):
            command = line.split(":", 1)[1].strip()
            if "-n worker@%h" not in command:
                raise BenchError("the Procfile's worker line has no `-n worker@%h` to rename")
            return command.replace("respawn worker", f"respawn {name}").replace(
                "-n worker@%h", f"-n {name}@%h"
            )
    raise BenchError("no worker line in the Procfile")


# --- samplers ----------------------------------------------------------------------------


def pg_snapshot(engine: Any, database: str) -> dict[str, Any]:
    from sqlalchemy import text

    cols = ", ".join(PG_COUNTERS)
    with engine.connect() as conn:
        row = (
            conn.execute(
                text(f"SELECT {cols}, numbackends FROM pg_stat_database WHERE datname = :d"),  # noqa: S608 - constant column names
                {"d": database},
            )
            .mappings()
            .one()
        )
    return dict(row)


def redis_snapshot(client: Any) -> dict[str, Any]:
    info = client.info()
    commands = client.info("commandstats")
    return {
        **{k: info.get(k, 0) for k in REDIS_COUNTERS},
        "used_memory": info.get("used_memory"),
        "used_memory_peak": info.get("used_memory_peak"),
        "connected_clients": info.get("connected_clients"),
        "commandstats": {
            k.removeprefix("cmdstat_"): v.get("calls", 0) for k, v in commands.items()
        },
    }


class Sampler:
    """Once a second: boxes by status, PostgreSQL backends on the scratch database, Redis
    clients and ops/s, the machine's busy CPU. One small query per second (counted in the
    PostgreSQL figures; noted in the report)."""

    def __init__(self, engine: Any, database: str, redis_client: Any, order_ids: list[str]):
        self.engine, self.database, self.redis = engine, database, redis_client
        self.ids = [uuid.UUID(o) for o in order_ids]
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def latest(self) -> dict[str, Any]:
        return self.samples[-1] if self.samples else {}

    def _loop(self) -> None:
        from sqlalchemy import text

        query = text(
            "SELECT status, count(*) FROM vibeboxes WHERE order_id = ANY(:ids) GROUP BY status"
        )
        backends = text(
            "SELECT count(*) FILTER (WHERE state = 'active'), count(*) FROM pg_stat_activity"
            " WHERE datname = :d"
        )
        while not self._stop.is_set():
            try:
                with self.engine.connect() as conn:
                    statuses = dict(conn.execute(query, {"ids": self.ids}).all())
                    active, total = conn.execute(backends, {"d": self.database}).one()
                info = self.redis.info()
                self.samples.append(
                    {
                        "t": round(time.time() - self.t0, 2),
                        "statuses": statuses,
                        "pg_backends": total,
                        "pg_active": active,
                        "redis_ops_per_sec": info.get("instantaneous_ops_per_sec"),
                        "redis_clients": info.get("connected_clients"),
                        "redis_used_memory": info.get("used_memory"),
                        "machine_busy_cores": _machine_busy_delta(),
                    }
                )
            except Exception as exc:  # a sample lost is not a failed run
                log(f"sampler: {exc!r}")
            self._stop.wait(1.0)


_last_busy: list[float] = []


def _machine_busy_delta() -> float | None:
    """Busy cores of the whole machine since the previous call."""
    clk = os.sysconf("SC_CLK_TCK")
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(cpu[:8]) if i not in (3, 4)) / clk
    now = time.monotonic()
    previous = list(_last_busy)
    _last_busy[:] = [busy, now]
    if not previous:
        return None
    return round((busy - previous[0]) / max(now - previous[1], 1e-6), 2)


# --- the run -----------------------------------------------------------------------------


def admit_all(bench: Bench, boxes: list[Any], concurrency: int) -> float:
    """Admit every sshd box to the pool (``pool.add_server``: SSH admission), in parallel."""
    from sqlalchemy.orm import Session

    def admit(box: Any) -> None:
        with Session(bench.engine) as session:
            server_id = bench.admit_box(session, box, f"fleet-{box.user}")
            session.commit()
            bench.server_ids[box.user] = server_id

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as executor:
        list(executor.map(admit, boxes))
    return time.perf_counter() - started


def checkouts(bench: Bench, api: HttpApi, n: int, concurrency: int) -> list[str]:
    """One user and one dev-provider checkout per box, through the API (untimed)."""
    users = [bench.make_user() for _ in range(n)]

    def checkout(user: tuple[uuid.UUID, dict[str, str]]) -> str:
        client = HttpApi(api.base_url)
        response = client.post(
            "/api/subscriptions/checkout",
            json={"planId": "basic", "billingCycle": "monthly", "provider": "dev"},
            headers=user[1],
        )
        if response.status not in (200, 201):
            raise BenchError(f"checkout answered {response.status}: {response.text}")
        return str(response.body["orderId"])

    with ThreadPoolExecutor(max_workers=concurrency) as executor:
        return list(executor.map(checkout, users))


def per_box_rows(engine: Any, order_ids: list[str]) -> list[dict[str, Any]]:
    """Per box: paid (webhook received, order paid), box created, and each step's times."""
    from sqlalchemy import text

    query = text(
        """
        SELECT v.id AS box_id, v.status, v.attempts, pe.received_at, o.paid_at,
               v.created_at AS box_created_at,
               json_agg(json_build_object('name', s.name, 'started', s.started_at,
                        'finished', s.finished_at, 'attempts', s.attempts, 'state', s.state))
                 AS steps
        FROM orders o
        JOIN payment_events pe ON pe.order_id = o.id
        LEFT JOIN vibeboxes v ON v.order_id = o.id
        LEFT JOIN provisioning_steps s ON s.vibebox_id = v.id
        WHERE o.id = ANY(:ids)
        GROUP BY v.id, v.status, v.attempts, pe.received_at, o.paid_at, v.created_at
        """
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": [uuid.UUID(o) for o in order_ids]}).mappings().all()
    out = []
    for row in rows:
        steps = {}
        for s in row["steps"] or []:
            if s.get("name"):
                steps[s["name"]] = {
                    "started": _epoch(s["started"]),
                    "finished": _epoch(s["finished"]),
                    "attempts": s["attempts"],
                    "state": s["state"],
                }
        out.append(
            {
                "box_id": str(row["box_id"]),
                "status": row["status"],
                "received": row["received_at"].timestamp(),
                "paid": row["paid_at"].timestamp() if row["paid_at"] else None,
                "box_created": row["box_created_at"].timestamp() if row["box_created_at"] else None,
                "steps": steps,
            }
        )
    return out


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(value)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def diff(after: dict[str, Any], before: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: (after.get(k) or 0) - (before.get(k) or 0) for k in keys}


def run(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = RESULTS_DIR / "run"
    run_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    deadline = started + args.timeout

    def left(what: str) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Deadline(f"--timeout {args.timeout:.0f}s reached while {what}")
        return remaining

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise Deadline(f"--timeout {args.timeout:.0f}s reached")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout) + 1)  # also interrupts a step that hangs
    results: dict[str, Any] = {"benchmark": "fleet", "timestamp": stamp, "uptime_before": _uptime()}
    timings: dict[str, float] = {}
    try:
        with contextlib.ExitStack() as stack:
            try:
                _run(args, stack, results, timings, left, stamp, run_dir)
            finally:
                signal.alarm(0)  # the clean-up below (users, processes) is never cut short
            t = time.monotonic()
        timings["teardown"] = time.monotonic() - t
    finally:
        signal.alarm(0)
    results["phases_s"] = {k: round(v, 1) for k, v in timings.items()}
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    out = RESULTS_DIR / f"fleet-{stamp}.json"
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"results: {out.relative_to(ROOT)} ({results['wall_seconds']} s in all)")
    if not args.no_plot and results.get("boxes"):
        from bench.plots import plot_fleet

        path = plot_fleet(
            results, RESULTS_DIR / "fleet.png" if args.boxes >= 500 else run_dir / "fleet.png"
        )
        log(f"plot: {path.relative_to(ROOT)}")
    print_summary(results)
    if results.get("checks", {}).get("ok") is False:
        raise CorrectnessError(f"fleet checks: {results['checks']}")
    return 0


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().strip()


def _run(
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
    results: dict[str, Any],
    timings: dict[str, float],
    left: Any,
    stamp: str,
    run_dir: Path,
) -> None:
    import redis

    from tests.support.sshd import BoxFleet, box_user_prefix

    t = time.monotonic()
    scratch = create_scratch(stack, args.redis_db)
    log(f"scratch database {scratch.database_name}, Redis {scratch.redis_url}")

    happy_port, port, flower_port = free_port(), free_port(), free_port()
    happy_url = f"http://127.0.0.1:{happy_port}"
    base_env = {k: v for k, v in os.environ.items()}
    bin_dir = str(Path(sys.executable).parent)
    base_env["PATH"] = f"{bin_dir}:{base_env.get('PATH', '/usr/bin:/bin')}"
    happy = Process(
        "Happy server",
        [sys.executable, "-m", "app.devtools.happy_server", "--port", str(happy_port)],
        {**base_env, "PYTHONPATH": str(ROOT)},
        run_dir / f"fleet-happy-{stamp}.log",
    )
    stack.callback(happy.stop)

    prefix = box_user_prefix()
    env = stack_environment(scratch, happy_url, port, flower_port)
    env["PATH"] = base_env["PATH"]
    env["BOX_USER_PREFIX"] = prefix  # the product's box users: removed by the fleet's close
    env["LOG_LEVEL"] = "WARNING"  # 500 boxes of INFO lines cost CPU the run should not measure
    os.environ["BOX_USER_PREFIX"] = prefix
    serve_log = run_dir / f"fleet-stack-{stamp}.log"
    log(f"starting the make-run stack (scripts/run.py serve) on :{port}; log {serve_log}")
    serve = Process("make-run stack", [sys.executable, "scripts/run.py", "serve"], env, serve_log)
    stack.callback(serve.stop)
    extra: list[Process] = []
    for i in range(args.workers):
        name = f"worker{i + 2}"
        command = procfile_worker_line(name)
        proc = Process(name, ["sh", "-c", command], env, run_dir / f"fleet-{name}-{stamp}.log")
        extra.append(proc)
        stack.callback(proc.stop)
    wait_http(f"{happy_url}/__double__/stats", 30, happy.proc, happy.log_path)
    wait_http(f"http://127.0.0.1:{port}/healthz", min(120, left("starting")), serve.proc, serve_log)

    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "VIBEBOX_ENV")})
    os.environ["HAPPY_SERVER_URL"] = happy_url
    os.environ["LOG_LEVEL"] = "WARNING"
    from app import create_app
    from app.db import get_engine

    app = create_app()
    settings = app.config["VIBEBOX_SETTINGS"]
    engine = get_engine(settings.database_url)
    api = HttpApi(f"http://127.0.0.1:{port}")
    bench = Bench(
        app=app, engine=engine, settings=settings, double=None, worker_log=str(serve_log), api=api
    )
    redis_client = redis.Redis.from_url(scratch.redis_url, socket_timeout=10)
    stack.callback(redis_client.close)
    results["machine"] = machine_info(engine, scratch.redis_url)
    results["config"] = {
        "boxes": args.boxes,
        "stack": "scripts/run.py serve (Procfile: web, worker, maintenance, beat, flower)",
        "extra_workers": [p.name for p in extra],
        "worker_concurrency": env.get("WORKER_CONCURRENCY") or "16 (Procfile default)",
        "web_concurrency": env.get("WEB_CONCURRENCY") or "2 (Procfile default)",
        "webhook_connections": args.connections,
        "changed_from_defaults": "RATELIMIT_ENABLED=false, LOG_LEVEL=WARNING",
    }
    timings["stack_start"] = time.monotonic() - t

    t = time.monotonic()
    fleet = stack.enter_context(BoxFleet(happy_url, slim_daemons=not args.full_daemons))
    log(f"starting {args.boxes} sshd servers")
    boxes = _start_boxes(fleet, args.boxes, args.admit_concurrency)
    timings["sshd_start"] = time.monotonic() - t
    left("starting sshd servers")

    def remove_box_users() -> None:
        from tests.support.sshd import remove_product_box_users

        try:
            remove_product_box_users(prefix)
        except Exception as exc:  # cleanup at exit: say it, go on
            log(f"could not remove every box user: {exc!r}")

    stack.callback(remove_box_users)
    stack.callback(serve.stop)  # before the users go: nothing creates box users any more
    for proc in extra:
        stack.callback(proc.stop)

    t = time.monotonic()
    log(f"admitting {len(boxes)} servers ({args.admit_concurrency} at a time)")
    admit_all(bench, boxes, args.admit_concurrency)
    timings["admission"] = time.monotonic() - t
    sshd_memory = memory_of([b.sshd_pid for b in boxes if b.sshd_pid])
    log(f"sshd: {sshd_memory}")

    t = time.monotonic()
    order_ids = checkouts(bench, api, args.boxes, 8)
    timings["checkouts"] = time.monotonic() - t
    left("checking out")
    log(f"{len(order_ids)} orders checked out; webhook burst on {args.connections} connections")

    from app.integrations.payments.dev_provider import DevProvider

    signer = DevProvider(settings.secret_key, "http://127.0.0.1")
    headers = {"Content-Type": "application/json"}
    deliveries = [
        Request("POST", "/api/subscriptions/webhook/dev", signer.completion_body(o), headers)
        for o in order_ids
    ]
    sids = {"stack": serve.proc.pid, **{p.name: p.proc.pid for p in extra}}
    kinds_ctx = {
        "sids": sids,
        "happy_pid": happy.proc.pid,
        "fleet_marker": str(fleet.directory),
        "prefix": prefix,
        "pg_port": os.environ.get("VIBEBOX_PG_PORT", ""),
        "redis_port": os.environ.get("VIBEBOX_REDIS_PORT", ""),
    }
    sampler = Sampler(engine, scratch.database_name, redis_client, order_ids)
    pg0, redis0 = pg_snapshot(engine, scratch.database_name), redis_snapshot(redis_client)
    cpu0 = cpu_by_kind(kinds_ctx)
    wall0 = time.time()
    sampler.start(wall0)
    t = time.monotonic()
    burst = run_load("127.0.0.1", port, connections=args.connections, requests=deliveries)
    log(f"webhooks: {burst.rps:.0f} req/s, statuses {dict(burst.statuses)}")
    done_at = None
    try:
        while True:
            counts = sampler.latest().get("statuses", {})
            settled = counts.get("running", 0) + counts.get("error", 0)
            if settled >= args.boxes:
                done_at = time.time()
                break
            if left("waiting for the boxes") < 5:
                log(f"time limit near: {counts}")
                break
            time.sleep(1.0)
    finally:
        sampler.stop()
    timings["burst_to_settled"] = time.monotonic() - t
    cpu1 = cpu_by_kind(kinds_ctx)
    pg1, redis1 = pg_snapshot(engine, scratch.database_name), redis_snapshot(redis_client)
    window = (done_at or time.time()) - wall0
    daemon_memory = memory_of(_daemon_pids(prefix))
    log(f"happy daemons: {daemon_memory}")

    if args.steady_seconds > 0 and done_at is not None:
        results["steady"] = steady_state(
            args.steady_seconds, kinds_ctx, engine, scratch.database_name, redis_client, left
        )

    rows = per_box_rows(engine, order_ids)
    running = [r for r in rows if r["status"] == "running"]
    latencies = [
        r["steps"]["mark_running"]["finished"] - r["received"]
        for r in running
        if r["steps"].get("mark_running", {}).get("finished")
    ]
    finish_times = sorted(
        r["steps"]["mark_running"]["finished"] - wall0
        for r in running
        if r["steps"].get("mark_running", {}).get("finished")
    )
    first_paid = min(r["received"] for r in rows) if rows else wall0
    last_running = max(finish_times) + wall0 if finish_times else wall0
    span = last_running - first_paid
    results["boxes"] = len(rows)
    results["running"] = len(running)
    results["statuses"] = dict(_count(r["status"] for r in rows))
    results["webhooks"] = burst.summary()
    results["throughput"] = {
        "first_paid_to_last_running_s": round(span, 2),
        "boxes_per_s": round(len(running) / span, 3) if span > 0 else None,
        "window_s": round(window, 2),
    }
    results["paid_to_running_s"] = percentiles(latencies)
    results["steps"] = step_breakdown(rows, STEP_NAMES)
    # The first step's wait, split: payment received -> box row created (the webhook's order
    # work) and box created -> first step claimed (provisioning queue).
    first = STEP_NAMES[0]
    results["intake"] = {
        "received_to_box_created": percentiles(
            r["box_created"] - r["received"] for r in rows if r["box_created"]
        ),
        "box_created_to_first_step": percentiles(
            r["steps"][first]["started"] - r["box_created"]
            for r in rows
            if r["box_created"] and (r["steps"].get(first) or {}).get("started")
        ),
    }
    results["running_over_time_s"] = [round(v, 3) for v in finish_times]
    results["paid_to_running_samples_s"] = [round(v, 3) for v in sorted(latencies)]
    results["memory"] = {"sshd": sshd_memory, "happy_daemons": daemon_memory}
    results["postgres"] = _pg_report(pg0, pg1, sampler.samples, window, len(running))
    results["redis"] = _redis_report(redis0, redis1, sampler.samples, window, len(running))
    results["cpu_s"] = {
        k: round(cpu1.get(k, 0.0) - cpu0.get(k, 0.0), 2) for k in sorted({*cpu0, *cpu1})
    }
    results["cpu_s_per_box"] = {
        k: round(v / max(len(running), 1), 4) for k, v in results["cpu_s"].items()
    }
    results["samples"] = sampler.samples
    results["per_box"] = rows  # epoch seconds: received, paid, box_created, steps
    results["uptime_after"] = _uptime()
    checks = {
        "webhook_5xx": burst.server_errors(),
        "webhook_transport_errors": len(burst.errors),
        "boxes": len(rows),
        "running": len(running),
        "ok": burst.server_errors() == 0 and not burst.errors and len(running) == args.boxes,
    }
    results["checks"] = checks


def steady_state(
    seconds: float, ctx: dict[str, Any], engine: Any, database: str, client: Any, left: Any
) -> dict[str, Any]:
    """What the running boxes cost once provisioned (health sweeps, reconcilers, beat):
    CPU per process kind, PostgreSQL commits and Redis commands over ``seconds``."""
    from sqlalchemy import text

    with engine.connect() as conn:
        running = conn.scalar(text("SELECT count(*) FROM vibeboxes WHERE status = 'running'"))
    seconds = max(0.0, min(seconds, left("measuring the steady state") - 30))
    log(f"steady state: {running} boxes running, measuring {seconds:.0f} s")
    cpu0, pg0, r0 = cpu_by_kind(ctx), pg_snapshot(engine, database), redis_snapshot(client)
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    cpu1, pg1, r1 = cpu_by_kind(ctx), pg_snapshot(engine, database), redis_snapshot(client)
    cores = {k: round((cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / elapsed, 4) for k in cpu1}
    pg = diff(pg1, pg0, PG_COUNTERS)
    commands = r1["total_commands_processed"] - r0["total_commands_processed"]
    return {
        "running_boxes": running,
        "seconds": round(elapsed, 1),
        "cpu_cores": cores,
        "pg_tps": round(pg["xact_commit"] / elapsed, 2),
        "pg_delta": pg,
        "redis_ops_per_s": round(commands / elapsed, 2),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def _start_boxes(fleet: Any, n: int, concurrency: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=concurrency) as executor:
        return list(executor.map(lambda _: fleet.new_box(), range(n)))


def _daemon_pids(prefix: str) -> list[int]:
    """Live processes of the product's box users (the ``happy`` daemon stand-ins)."""
    uids = {e.pw_uid for e in pwd.getpwall() if e.pw_name.startswith(prefix)}
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and proc.stat().st_uid in uids:
                pids.append(int(proc.name))
    return pids


def _pg_report(
    before: dict[str, Any],
    after: dict[str, Any],
    samples: list[dict[str, Any]],
    window: float,
    boxes: int,
) -> dict[str, Any]:
    delta = diff(after, before, PG_COUNTERS)
    backends = [s["pg_backends"] for s in samples if "pg_backends" in s]
    active = [s["pg_active"] for s in samples if "pg_active" in s]
    return {
        "delta": delta,
        "tps": round(delta["xact_commit"] / window, 1) if window > 0 else None,
        "xact_per_box": round(delta["xact_commit"] / max(boxes, 1), 1),
        "tuples_written_per_box": round(
            (delta["tup_inserted"] + delta["tup_updated"] + delta["tup_deleted"]) / max(boxes, 1), 1
        ),
        "backends_max": max(backends, default=None),
        "backends_median": statistics.median(backends) if backends else None,
        "active_max": max(active, default=None),
        "active_median": statistics.median(active) if active else None,
        "note": "includes the bench's own sampling: ~2 short queries a second",
    }


def _redis_report(
    before: dict[str, Any],
    after: dict[str, Any],
    samples: list[dict[str, Any]],
    window: float,
    boxes: int,
) -> dict[str, Any]:
    delta = diff(after, before, REDIS_COUNTERS)
    calls = {k: v - before["commandstats"].get(k, 0) for k, v in after["commandstats"].items()}
    top = dict(sorted(((k, v) for k, v in calls.items() if v), key=lambda kv: -kv[1])[:10])
    ops = [s["redis_ops_per_sec"] for s in samples if s.get("redis_ops_per_sec") is not None]
    clients = [s["redis_clients"] for s in samples if s.get("redis_clients") is not None]
    return {
        "delta": delta,
        "ops_per_s_mean": round(delta["total_commands_processed"] / window, 1) if window else None,
        "ops_per_s_peak": max(ops, default=None),
        "commands_per_box": round(delta["total_commands_processed"] / max(boxes, 1), 1),
        "top_commands": top,
        "clients_max": max(clients, default=None),
        "used_memory_mb": round((after.get("used_memory") or 0) / 2**20, 1),
        "used_memory_peak_mb": round((after.get("used_memory_peak") or 0) / 2**20, 1),
    }


def print_summary(results: dict[str, Any]) -> None:
    if not results.get("boxes"):
        return
    p = results["paid_to_running_s"]
    print(
        f"\n{results['running']}/{results['boxes']} boxes running; "
        f"{results['throughput']['boxes_per_s']} boxes/s; paid->running p50 {p.get('p50')} s, "
        f"p90 {p.get('p90')} s, p99 {p.get('p99')} s"
    )
    print(f"postgres: {json.dumps({k: v for k, v in results['postgres'].items() if k != 'delta'})}")
    print(f"redis: {json.dumps({k: v for k, v in results['redis'].items() if k != 'delta'})}")
    print(f"cpu s: {results['cpu_s']}")
    print(f"memory: {results['memory']}")
    print(f"steps: {json.dumps(results['steps'])}")
    print(f"intake: {json.dumps(results['intake'])}")
    if "steady" in results:
        print(f"steady state: {json.dumps(results['steady'])}")
    print(f"phases s: {results.get('phases_s')}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boxes", type=int, default=500, help="boxes and servers (default 500)")
    parser.add_argument(
        "--workers", type=int, default=1, help="provisioning workers beside the stack's (default 1)"
    )
    parser.add_argument("--connections", type=int, default=32, help="webhook burst connections")
    parser.add_argument(
        "--admit-concurrency", type=int, default=8, help="sshd servers started/admitted at once"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="hard limit, whole run (s)")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis logical db (default 13)")
    parser.add_argument(
        "--full-daemons",
        action="store_true",
        help="the `happy` stand-in's daemons stay full size (default: slim, ~3 MB each)",
    )
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=90.0,
        help="once all run: measure what the running boxes cost for this long (0: skip)",
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.boxes < 1 or args.workers < 0:
        parser.error("--boxes must be >= 1 and --workers >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded_main(lambda: run(args), "fleet.py")


if __name__ == "__main__":
    sys.exit(main())
