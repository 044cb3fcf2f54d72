#!/usr/bin/env python3
"""Issue 13's benchmarks on the stack as ``make run`` ships it, each interleaved with its
baseline in the same run (``make bench``).

The stack is started the way ``make run`` starts it: ``scripts/run.py serve`` (migrations,
then honcho with the Procfile's web, worker, beat and flower, shipped defaults: gunicorn
gthread ``WEB_CONCURRENCY`` x ``WEB_THREADS``, worker ``-c WORKER_CONCURRENCY``), pointed at
a scratch database and Redis db on the embedded servers, on free ports, with ``VIBEBOX_DEMO=0``
and ``HAPPY_SERVER_URL`` set to the project's Happy double (``app/devtools/happy_server.py``,
in this process). Pool servers are real sshd boxes on 127.0.0.1 (``BoxFleet``). The only
setting changed from the shipped defaults is ``RATELIMIT_ENABLED=false`` (P3 and P4 are load
tests from one IP; the limits would answer 429 by design).

- P1 one box: ``POST /api/admin/provision`` 202 -> status ``running`` (polled every 20 ms)
  vs the raw remote work (the same Happy and SSH calls done directly; ``common.Bench``).
- P2 N boxes on N servers (8 and 50): first request -> all running vs a 4-thread pool
  (``--concurrency``) doing the same raw work.
- P3 ``GET /api/vibeboxes/<id>`` at 1/8/32 connections vs ``bench/bare_app.py`` (PyJWT
  decode + one PK SELECT) under the same gunicorn config: req/s, p50/p99.
- P4 webhook burst: 300 dev-provider orders, 390 deliveries (30% duplicates, shuffled), 32
  connections vs the bare endpoint (same HMAC, one INSERT ... ON CONFLICT DO NOTHING);
  verified: one payment event, one subscription and one box per order, no 5xx.
- P5 100 concurrent ``pool.allocate_server`` calls on 50 servers vs one
  ``UPDATE ... (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING`` each; verified: 50
  distinct allocations.

Correctness checks failing -> exit 1; timings never fail the run. Results:
``bench/results/stack-<stamp>.json`` (git-ignored), ``bench/results/latest.json`` and the
plots ``bench/results/*.png`` (committed).

    python scripts/services.py exec -- .venv/bin/python bench/stack.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path set-up
    RESULTS_DIR,
    Bench,
    BenchError,
    CorrectnessError,
    HttpApi,
    create_scratch,
    guarded_main,
    log,
    machine_info,
    part_a,
    part_b,
    session_cpu_seconds,
)
from bench.loadgen import LoadResult, Request, merge, run_load  # noqa: E402

TARGETS = {  # issue 13's targets: (kind, value); "time" ratios <= value, "rate" ratios >= value
    "P1": ("time", 1.25),
    "P2-8": ("time", 1.25),
    "P2-50": ("time", 1.25),
    "P3-1": ("rate", 0.85),
    "P3-8": ("rate", 0.85),
    "P3-32": ("rate", 0.85),
    "P4": ("rate", 0.5),
    "P5": ("time", 1.5),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    headers: dict[str, str] | None = None,
) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{url}: the process exited ({proc.returncode}); see {log_path}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise BenchError(f"{url} not answering after {timeout:.0f}s; see {log_path}")


class Process:
    """A command started in its own session, logged to a file, stopped by its PID (SIGTERM,
    then SIGKILL to the process group it leads, i.e. only what it started)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path):
        self.name, self.log_path = name, log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, grace: float = 40.0) -> None:
        if self._log.closed:
            return  # stopped already
        if self.proc.poll() is None:
            log(f"stopping {self.name} (pid {self.proc.pid})")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} still running after {grace:.0f}s: SIGKILL to its group")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of its own session only
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


# --- P3 status polls ---------------------------------------------------------------------------


def p3_status(
    sys_port: int, bare_port: int, box_id: str, headers: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    system_req = Request("GET", f"/api/vibeboxes/{box_id}", headers=headers)
    bare_req = Request("GET", f"/bare/vibeboxes/{box_id}", headers=headers)
    sides = {"system": (sys_port, system_req), "baseline": (bare_port, bare_req)}
    for port, req in sides.values():  # warm-up: every worker process and thread, both sides
        run_load("127.0.0.1", port, connections=32, request=req, duration_s=1.0)
    levels: dict[str, Any] = {}
    for conns in args.p3_connections:
        runs: dict[str, list[LoadResult]] = {"system": [], "baseline": []}
        for rep in range(args.p3_reps):
            order = ("system", "baseline") if rep % 2 == 0 else ("baseline", "system")
            for kind in order:
                port, req = sides[kind]
                result = run_load(
                    "127.0.0.1", port, connections=conns, request=req, duration_s=args.p3_seconds
                )
                runs[kind].append(result)
                log(
                    f"P3 {conns} conn rep {rep + 1}: {kind} {result.rps:.0f} req/s, "
                    f"statuses {dict(result.statuses)}"
                )
        system, baseline = merge(runs["system"]), merge(runs["baseline"])
        for kind, merged in (("system", system), ("baseline", baseline)):
            bad = {s: n for s, n in merged.statuses.items() if s != 200}
            if bad or merged.errors:
                raise CorrectnessError(
                    f"P3 {kind} at {conns} connections: non-200 answers {bad}, "
                    f"errors {merged.errors[:3]}"
                )
        levels[str(conns)] = {
            "system": system.summary(),
            "baseline": baseline.summary(),
            "ratio": round(system.rps / baseline.rps, 3),
            "system_latencies_ms": [round(v * 1000, 3) for v in system.latencies_s],
            "baseline_latencies_ms": [round(v * 1000, 3) for v in baseline.latencies_s],
        }
    return {"seconds_per_run": args.p3_seconds, "reps": args.p3_reps, "levels": levels}


# --- P4 webhook burst --------------------------------------------------------------------------


def p4_webhooks(
    bench: Bench, sys_port: int, bare_port: int, stack_sid: int, args: argparse.Namespace
) -> dict[str, Any]:
    from sqlalchemy import text

    from app.integrations.payments.dev_provider import DevProvider

    n, dup_share, conns = args.p4_orders, 0.3, args.p4_connections
    # Orders through the API (checkout, dev provider), as a client makes them; untimed.
    api = HttpApi(f"http://127.0.0.1:{sys_port}")
    users = [bench.make_user() for _ in range(n)]
    order_ids: list[str] = []
    for _user_id, headers in users:
        response = api.post(
            "/api/subscriptions/checkout",
            json={"planId": "basic", "billingCycle": "monthly", "provider": "dev"},
            headers=headers,
        )
        if response.status not in (200, 201):
            raise BenchError(f"checkout answered {response.status}: {response.text}")
        order_ids.append(response.body["orderId"])
    # No pool server takes these boxes (they wait for capacity, as with an empty pool), so
    # the burst measures intake and whatever the worker does meanwhile, not SSH work.
    with bench.engine.begin() as conn:
        conn.execute(text("UPDATE servers SET state = 'draining'"))
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_webhook_events (provider text NOT NULL,"
                " event_id text NOT NULL, order_id uuid, received_at timestamptz NOT NULL"
                " DEFAULT now(), PRIMARY KEY (provider, event_id))"
            )
        )
    signer = DevProvider(bench.settings.secret_key, "http://127.0.0.1")
    rng = random.Random(13)
    deliveries = order_ids + rng.sample(order_ids, round(n * dup_share))
    rng.shuffle(deliveries)
    headers = {"Content-Type": "application/json"}

    def burst(path: str) -> list[Request]:
        return [Request("POST", path, signer.completion_body(o), headers) for o in deliveries]

    def bare_burst() -> LoadResult:
        with bench.engine.begin() as conn:
            conn.execute(text("TRUNCATE bench_webhook_events"))
        result = run_load(
            "127.0.0.1", bare_port, connections=conns, requests=burst("/bare/webhook/dev")
        )
        with bench.engine.connect() as conn:
            rows = conn.scalar(text("SELECT count(*) FROM bench_webhook_events"))
        if rows != n or result.server_errors() or result.errors or result.count != len(deliveries):
            raise CorrectnessError(
                f"P4 baseline: {rows} events for {n} orders, statuses {dict(result.statuses)}, "
                f"errors {result.errors[:3]}"
            )
        log(f"P4 baseline: {result.rps:.0f} req/s, statuses {dict(result.statuses)}")
        return result

    # One system burst (its 300 orders can be paid once), between two baseline bursts.
    before = bare_burst()
    system = run_load(
        "127.0.0.1", sys_port, connections=conns, requests=burst("/api/subscriptions/webhook/dev")
    )
    log(f"P4 system: {system.rps:.0f} req/s, statuses {dict(system.statuses)}")
    after = bare_burst()
    checks = verify_p4(bench, order_ids, system, len(deliveries))
    waiting = waiting_cost(bench, order_ids, stack_sid, args.idle_seconds)
    baseline = merge([before, after])
    baseline_rps = statistics.fmean([before.rps, after.rps])
    return {
        "orders": n,
        "deliveries": len(deliveries),
        "duplicates": len(deliveries) - n,
        "connections": conns,
        "system": system.summary(),
        "baseline": {**baseline.summary(), "rps": round(baseline_rps, 1)},
        "ratio": round(system.rps / baseline_rps, 3),
        "checks": checks,
        "waiting": waiting,
        "system_latencies_ms": [round(v * 1000, 3) for v in system.latencies_s],
        "baseline_latencies_ms": [round(v * 1000, 3) for v in baseline.latencies_s],
    }


def waiting_cost(
    bench: Bench, order_ids: list[str], stack_sid: int, seconds: float
) -> dict[str, Any]:
    """What the boxes of the burst cost while they wait for capacity (no server is free):
    CPU used by the whole stack (web, worker, beat, Flower; its process session) over
    ``seconds``, after a short settling time. Issue 13: waiting must cost next to nothing."""
    from sqlalchemy import text

    time.sleep(3.0)
    ids = [uuid.UUID(o) for o in order_ids]
    count = text("SELECT count(*) FROM vibeboxes WHERE order_id = ANY(:ids) AND status = :s")
    with bench.engine.connect() as conn:
        waiting = conn.scalar(count, {"ids": ids, "s": "waiting_for_capacity"})
    cpu0, t0 = session_cpu_seconds(stack_sid), time.perf_counter()
    time.sleep(seconds)
    cores = (session_cpu_seconds(stack_sid) - cpu0) / (time.perf_counter() - t0)
    log(f"P4 waiting boxes: {waiting} waiting for capacity, the stack used {cores:.2f} cores")
    return {"waiting_boxes": waiting, "seconds": seconds, "stack_cpu_cores": round(cores, 3)}


def verify_p4(
    bench: Bench, order_ids: list[str], system: LoadResult, deliveries: int
) -> dict[str, Any]:
    """One payment event, one subscription and one box per order; no 5xx. The order work
    may finish after the answer (a task): wait up to 60 s for it."""
    from sqlalchemy import text

    ids = [uuid.UUID(o) for o in order_ids]
    query = text(
        """
        SELECT
          (SELECT count(*) FROM orders WHERE id = ANY(:ids) AND status = 'paid') AS paid,
          (SELECT count(*) FROM payment_events WHERE order_id = ANY(:ids)) AS events,
          (SELECT count(DISTINCT order_id) FROM payment_events WHERE order_id = ANY(:ids))
            AS event_orders,
          (SELECT count(*) FROM orders WHERE id = ANY(:ids) AND subscription_id IS NOT NULL)
            AS with_subscription,
          (SELECT count(DISTINCT subscription_id) FROM orders WHERE id = ANY(:ids))
            AS subscriptions,
          (SELECT count(*) FROM subscriptions s JOIN orders o ON o.user_id = s.user_id
             WHERE o.id = ANY(:ids)) AS user_subscriptions,
          (SELECT count(*) FROM vibeboxes WHERE order_id = ANY(:ids)) AS boxes
        """
    )
    n = len(ids)
    deadline = time.monotonic() + 60
    while True:
        with bench.engine.connect() as conn:
            row = dict(conn.execute(query, {"ids": ids}).mappings().one())
        done = row["paid"] == n and row["boxes"] == n and row["with_subscription"] == n
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    checks = {
        **row,
        "orders": n,
        "answers": system.count,
        "statuses": {str(k): v for k, v in system.statuses.items()},
        "server_errors": system.server_errors(),
        "transport_errors": len(system.errors),
    }
    expected = {
        "paid": n,
        "events": n,
        "event_orders": n,
        "with_subscription": n,
        "subscriptions": n,
        "user_subscriptions": n,
        "boxes": n,
        "answers": deliveries,
        "server_errors": 0,
        "transport_errors": 0,
    }
    wrong = {k: (checks[k], v) for k, v in expected.items() if checks[k] != v}
    checks["ok"] = not wrong
    if wrong:
        raise CorrectnessError(f"P4 system correctness (got, expected): {wrong}")
    return checks


# --- P5 allocations ----------------------------------------------------------------------------


def _concurrently(n: int, prepare: Callable[[int], Any], act: Callable[[Any], Any]) -> tuple:
    """``n`` threads: each prepares (untimed, e.g. checks out a connection), then all act at
    once; returns (wall seconds from release to the last finish, results)."""
    barrier = threading.Barrier(n + 1)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    ends: list[float] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        state = prepare(i)
        try:
            barrier.wait()
            results[i] = act(state)
        except BaseException as exc:
            errors.append(exc)
        finally:
            with lock:
                ends.append(time.perf_counter())
            close = getattr(state, "close", None)
            if close:
                close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"{len(errors)} of {n} calls failed: {errors[0]!r}")
    return max(ends) - t0, results


def p5_allocations(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from app.models import VibeBox
    from app.services import pool

    n_alloc, n_servers = args.p5_allocations, args.p5_servers
    engine = create_engine(bench.engine.url, pool_size=n_alloc, max_overflow=0)
    users = [bench.make_user()[0] for _ in range(n_alloc)]
    with Session(engine) as session:
        boxes = [VibeBox(user_id=u, plan_id="basic", status="provisioning") for u in users]
        session.add_all(boxes)
        session.commit()
        box_ids = [b.id for b in boxes]
    server_ids = list(bench.server_ids.values())[:n_servers]
    if len(server_ids) < n_servers:
        raise BenchError(f"P5 needs {n_servers} pool servers, the pool has {len(server_ids)}")

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE vibeboxes SET server_id = NULL WHERE id = ANY(:ids)"), {"ids": box_ids}
            )
            conn.execute(
                text(
                    "UPDATE servers SET state = CASE WHEN id = ANY(:ids) THEN 'available'"
                    " ELSE 'draining' END"
                ),
                {"ids": server_ids},
            )

    def system_prepare(i: int) -> Any:
        session = Session(engine)
        session.connection()  # checked out and in a transaction before the start
        session.info["box"] = session.get(VibeBox, box_ids[i])
        return session

    def system_act(session: Any) -> str | None:
        server = pool.allocate_server(session, session.info["box"])
        # Read before the commit expires it (as the baseline's RETURNING id is): read after,
        # it costs a SELECT that the provisioning step never makes.
        server_id = str(server.id) if server is not None else None
        session.commit()
        return server_id

    raw = text(
        "UPDATE servers SET state = 'allocated' WHERE id = (SELECT id FROM servers"
        " WHERE state = 'available' AND cpu_cores >= :cpu AND ram_gb >= :ram AND disk_gb >= :disk"
        " ORDER BY cpu_cores, ram_gb, disk_gb, created_at, id"
        " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
    )

    def baseline_prepare(_i: int) -> Any:
        conn = engine.connect()
        conn.exec_driver_sql("SELECT 1")
        conn.commit()
        return conn

    def baseline_act(conn: Any) -> str | None:
        value = conn.execute(raw, {"cpu": 1, "ram": 1, "disk": 1}).scalar()
        conn.commit()
        return str(value) if value is not None else None

    times: dict[str, list[float]] = {"system": [], "baseline": []}
    try:
        for rep in range(args.p5_warmup + args.p5_reps):
            order = ("system", "baseline") if rep % 2 == 0 else ("baseline", "system")
            for kind in order:
                reset()
                if kind == "system":
                    wall, got = _concurrently(n_alloc, system_prepare, system_act)
                    with engine.connect() as conn:
                        held = conn.execute(
                            text(
                                "SELECT count(server_id), count(DISTINCT server_id)"
                                " FROM vibeboxes WHERE id = ANY(:ids)"
                            ),
                            {"ids": box_ids},
                        ).one()
                    if tuple(held) != (n_servers, n_servers):
                        raise CorrectnessError(f"P5 system: boxes hold (servers, distinct) {held}")
                else:
                    wall, got = _concurrently(n_alloc, baseline_prepare, baseline_act)
                allocated = [g for g in got if g is not None]
                if len(allocated) != n_servers or len(set(allocated)) != n_servers:
                    raise CorrectnessError(
                        f"P5 {kind}: {len(allocated)} allocations, {len(set(allocated))} "
                        f"distinct, expected {n_servers}"
                    )
                if rep >= args.p5_warmup:
                    times[kind].append(wall)
                log(f"P5 rep {rep + 1}: {kind} {wall * 1000:.0f} ms, {len(allocated)} distinct")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM vibeboxes WHERE id = ANY(:ids)"), {"ids": box_ids})
            conn.execute(text("UPDATE servers SET state = 'available' WHERE state <> 'available'"))
        engine.dispose()
    s_med, b_med = statistics.median(times["system"]), statistics.median(times["baseline"])
    return {
        "allocations": n_alloc,
        "servers": n_servers,
        "reps": args.p5_reps,
        "system_ms": [round(t * 1000, 1) for t in times["system"]],
        "baseline_ms": [round(t * 1000, 1) for t in times["baseline"]],
        "system_median_ms": round(s_med * 1000, 1),
        "baseline_median_ms": round(b_med * 1000, 1),
        "ratio": round(s_med / b_med, 3),
        "checks": {"distinct_allocations": n_servers, "ok": True},
    }


# --- the rows ----------------------------------------------------------------------------------


def rows_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark of issue 13: now / baseline / ratio / target."""
    rows: list[dict[str, Any]] = []

    def add(
        key: str,
        label: str,
        now: str,
        base: str,
        ratio: float,
        extra: str = "",
        p99: tuple[float, float] | None = None,  # (measured, limit) in ms
    ) -> None:
        kind, target = TARGETS.get(key) or TARGETS[key.split("-")[0] + "-8"]
        met = ratio <= target if kind == "time" else ratio >= target
        if p99 is not None:
            met = met and p99[0] < p99[1]
        rows.append(
            {
                "key": key,
                "label": label,
                "now": now,
                "baseline": base,
                "ratio": ratio,
                "target": f"{'<=' if kind == 'time' else '>='} {target}x{extra}",
                "target_value": target,
                "kind": kind,
                "met": met,
            }
        )

    if "p1" in results:
        a = results["p1"]
        add(
            "P1",
            "P1 one box, 202 -> running",
            f"{a['system_from_accept']['median_ms']:.0f} ms",
            f"{a['baseline']['median_ms']:.0f} ms",
            a["ratio"],
        )
    for key in sorted((k for k in results if k.startswith("p2_")), key=lambda k: int(k[3:])):
        if key in results:
            b = results[key]
            add(
                f"P2-{b['boxes']}",
                f"P2 {b['boxes']} boxes on {b['boxes']} servers",
                f"{b['system']['median_ms'] / 1000:.2f} s",
                f"{b['baseline']['median_ms'] / 1000:.2f} s",
                b["ratio"],
            )
    if "p3" in results:
        for conns, level in results["p3"]["levels"].items():
            s, bl = level["system"], level["baseline"]
            add(
                f"P3-{conns}",
                f"P3 status poll, {conns} conn",
                f"{s['rps']:.0f} req/s, p99 {s['p99_ms']:.0f} ms",
                f"{bl['rps']:.0f} req/s, p99 {bl['p99_ms']:.0f} ms",
                level["ratio"],
                ", p99 < 50 ms" if conns == "32" else "",
                (s["p99_ms"], 50.0) if conns == "32" else None,
            )
    if "p4" in results:
        p = results["p4"]
        add(
            "P4",
            f"P4 webhook burst ({p['deliveries']} deliveries, {p['connections']} conn)",
            f"{p['system']['rps']:.0f} req/s, p99 {p['system']['p99_ms']:.0f} ms",
            f"{p['baseline']['rps']:.0f} req/s, p99 {p['baseline']['p99_ms']:.0f} ms",
            p["ratio"],
            ", p99 < 100 ms",
            (p["system"]["p99_ms"], 100.0),
        )
    if "p5" in results:
        p = results["p5"]
        add(
            "P5",
            f"P5 {p['allocations']} allocations on {p['servers']} servers",
            f"{p['system_median_ms']:.0f} ms",
            f"{p['baseline_median_ms']:.0f} ms",
            p["ratio"],
        )
    return rows


def print_rows(rows: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    print(f"\nmachine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), shared")
    print("| benchmark | now | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        met = "yes" if r["met"] else "no"
        print(
            f"| {r['label']} | {r['now']} | {r['baseline']} | {r['ratio']:.2f}x "
            f"| {r['target']} | {met} |"
        )
    print()


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and shorter loads")
    parser.add_argument(
        "--only",
        default="p1,p2,p3,p4,p5",
        help="comma-separated subset of p1,p2,p3,p4,p5 (default: all)",
    )
    parser.add_argument("--p1-runs", type=int, default=10)
    parser.add_argument("--p1-warmup", type=int, default=2)
    parser.add_argument("--p2-boxes", default="8,50", help="box counts (default 8,50)")
    parser.add_argument("--p2-reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="P2 baseline pool size")
    parser.add_argument("--p3-seconds", type=float, default=4.0)
    parser.add_argument("--p3-reps", type=int, default=2)
    parser.add_argument("--p3-connections", default="1,8,32")
    parser.add_argument("--p4-orders", type=int, default=300)
    parser.add_argument("--p4-connections", type=int, default=32)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="after P4: how long to measure the stack's CPU while the boxes wait (default 10)",
    )
    parser.add_argument("--p5-allocations", type=int, default=100)
    parser.add_argument("--p5-servers", type=int, default=50)
    parser.add_argument("--p5-reps", type=int, default=5)
    parser.add_argument("--p5-warmup", type=int, default=1)
    parser.add_argument("--redis-db", type=int, default=14, help="Redis logical db (default 14)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.p1_runs, args.p1_warmup, args.p2_reps = 4, 1, 1
        args.p3_seconds, args.p3_reps, args.p5_reps = 2.0, 1, 3
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    args.p2_boxes = sorted({int(v) for v in args.p2_boxes.split(",") if v.strip()})
    args.p3_connections = [int(v) for v in args.p3_connections.split(",") if v.strip()]
    if "p5" in args.only:
        args.p2_boxes = sorted({*args.p2_boxes, args.p5_servers})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded_main(lambda: run(args), "stack.py")


def stack_environment(scratch: Any, happy_url: str, port: int, flower_port: int) -> dict[str, str]:
    """``make run``'s environment for this run: shipped defaults, except where it must point
    (database, Redis, ports, the Happy double) and no rate limits (see the module doc)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIBEBOX_", "CELERY_", "WEB_", "WORKER_", "PROVISION", "SSH_"))
        or k in ("VIBEBOX_PG_PORT", "VIBEBOX_REDIS_PORT")
    }
    env.update(
        {
            "DATABASE_URL": scratch.database_url,
            "REDIS_URL": scratch.redis_url,
            "CELERY_BROKER_URL": scratch.redis_url,
            "CELERY_RESULT_BACKEND": scratch.redis_url,
            "PORT": str(port),
            "FLOWER_PORT": str(flower_port),
            "HOST": "127.0.0.1",
            "VIBEBOX_DEMO": "0",
            "VIBEBOX_ENV": "development",
            "HAPPY_SERVER_URL": happy_url,
            "RATELIMIT_ENABLED": "false",
            "PROMETHEUS_MULTIPROC_DIR": str(RESULTS_DIR / "run" / "prometheus"),
        }
    )
    return env


def run(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "run").mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    results: dict[str, Any] = {"benchmark": "stack", "timestamp": stamp}
    with contextlib.ExitStack() as stack:
        scratch = create_scratch(stack, args.redis_db)
        log(f"scratch database {scratch.database_name}, Redis {scratch.redis_url}")

        from app.devtools.happy_server import HappyDouble

        double = stack.enter_context(HappyDouble())
        port, flower_port, bare_port = free_port(), free_port(), free_port()
        env = stack_environment(scratch, double.url, port, flower_port)
        serve_log = RESULTS_DIR / "run" / f"stack-{stamp}.log"
        log(f"starting the make-run stack (scripts/run.py serve) on :{port}; log {serve_log}")
        serve = Process(
            "make-run stack", [sys.executable, "scripts/run.py", "serve"], env, serve_log
        )
        stack.callback(serve.stop)
        wait_http(f"http://127.0.0.1:{port}/healthz", 120, serve.proc, serve_log)

        bare_log = RESULTS_DIR / "run" / f"bare-{stamp}.log"
        bare = Process(
            "bare baseline app",
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "-c",
                "python:app.gunicorn_config",
                "--bind",
                f"127.0.0.1:{bare_port}",
                "--workers",
                env.get("WEB_CONCURRENCY") or "2",  # the Procfile's web default
                "--access-logfile",  # as the Procfile's web line
                "-",
                "--no-control-socket",
                "bench.bare_app:app",
            ],
            {**env, "PYTHONPATH": str(ROOT)},
            bare_log,
        )
        stack.callback(bare.stop)

        # This process: the admin/user tokens and the rows, with the stack's settings.
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "VIBEBOX_ENV")})
        os.environ["HAPPY_SERVER_URL"] = double.url
        os.environ["LOG_LEVEL"] = "WARNING"
        from app import create_app
        from app.db import get_engine
        from tests.support.sshd import BoxFleet

        app = create_app()
        settings = app.config["VIBEBOX_SETTINGS"]
        engine = get_engine(settings.database_url)
        bench = Bench(
            app=app,
            engine=engine,
            settings=settings,
            double=double,
            worker_log=str(serve_log),
            api=HttpApi(f"http://127.0.0.1:{port}"),
        )
        _, bench.admin_headers = bench.make_user(admin=True)
        results["machine"] = machine_info(engine, scratch.redis_url)
        results["config"] = {
            "shipped_defaults": "Procfile via scripts/run.py serve; RATELIMIT_ENABLED=false",
            "web": f"gunicorn gthread, WEB_CONCURRENCY={env.get('WEB_CONCURRENCY') or 2}",
            "worker_concurrency": env.get("WORKER_CONCURRENCY") or 4,
            "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        }

        fleet = stack.enter_context(BoxFleet(double.url))
        need = max([1, *(args.p2_boxes if "p2" in args.only or "p5" in args.only else [])])
        log(f"starting {need} sshd boxes")
        boxes = fleet.start(need)

        def remove_box_users() -> None:
            """Box users the stack created on the sshd boxes (an interrupted run leaves
            some): removed once the stack is stopped, before the fleet goes."""
            try:
                bench.reset_remote(boxes)
            except Exception as exc:  # cleanup at exit: say it, go on stopping the rest
                log(f"could not remove every box user: {exc!r}")

        stack.callback(remove_box_users)
        stack.callback(serve.stop)  # runs first: nothing creates box users any more
        bench.admit(boxes[:1])

        if "p1" in args.only:
            log(f"P1: {args.p1_runs} runs + {args.p1_warmup} warm-up")
            results["p1"] = part_a(bench, boxes[0], args.p1_runs, args.p1_warmup)
        admitted = 1
        for n in args.p2_boxes:
            bench.admit(boxes[admitted:n])
            admitted = max(admitted, n)
            if "p2" in args.only:
                log(f"P2: {n} boxes on {n} servers, {args.p2_reps} reps + 1 warm-up")
                results[f"p2_{n}"] = part_b(
                    bench, boxes[:n], args.concurrency, args.p2_reps, min(1, args.p1_warmup)
                )
        if "p5" in args.only:
            log(f"P5: {args.p5_allocations} allocations on {args.p5_servers} servers")
            results["p5"] = p5_allocations(bench, args)
        if "p3" in args.only:
            results["p3"] = run_p3(bench, port, bare_port, bare, bare_log, args)
        if "p4" in args.only:
            log(f"P4: {args.p4_orders} orders, {args.p4_connections} connections")
            results["p4"] = p4_webhooks(bench, port, bare_port, serve.proc.pid, args)
        results["rows"] = rows_of(results)
        print_rows(results["rows"], results["machine"])
        if "p4" in results:
            w = results["p4"]["waiting"]
            print(
                f"waiting for capacity: {w['waiting_boxes']} boxes; the stack used "
                f"{w['stack_cpu_cores']:.2f} cores over {w['seconds']:.0f} s (target: ~0)\n"
            )
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    out = RESULTS_DIR / f"stack-{stamp}.json"
    text_out = json.dumps(results, indent=1, default=str) + "\n"
    out.write_text(text_out)
    # Only a run of every row replaces the committed summary and plots; a subset's go to
    # bench/results/run/.
    complete = args.only >= {"p1", "p2", "p3", "p4", "p5"}
    artifacts = RESULTS_DIR if complete else RESULTS_DIR / "run"
    (artifacts / "latest.json").write_text(text_out)
    (artifacts / "summary.json").write_text(json.dumps(compact(results), indent=1) + "\n")
    log(f"results: {out.relative_to(ROOT)} ({results['wall_seconds']} s in all)")
    if not args.no_plots:
        from bench.plots import write_plots

        for path in write_plots(results, artifacts):
            log(f"plot: {path.relative_to(ROOT)}")
    return 0


def compact(value: Any) -> Any:
    """The result without per-request latencies and per-run samples (committed as
    ``bench/results/summary.json``)."""
    if isinstance(value, dict):
        return {
            k: compact(v) for k, v in value.items() if not k.endswith(("_latencies_ms", "_samples"))
        }
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def run_p3(
    bench: Bench,
    port: int,
    bare_port: int,
    bare: Process,
    bare_log: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """A running box of a fresh user, polled by its owner."""
    user_id, headers = bench.make_user()
    response = bench.api.post(
        "/api/admin/provision",
        json={"userId": str(user_id), "planId": "basic"},
        headers=bench.admin_headers,
    )
    if response.status != 202:
        raise BenchError(f"provision answered {response.status}: {response.text}")
    box_id = response.body["vibeBox"]["id"]
    deadline = time.monotonic() + 60
    while (
        bench.api.get(f"/api/vibeboxes/{box_id}", headers=headers).body["vibeBox"]["status"]
        != "running"
    ):
        if time.monotonic() > deadline:
            raise BenchError(f"P3: box {box_id} not running after 60 s")
        time.sleep(0.1)
    bare_url = f"http://127.0.0.1:{bare_port}/bare/vibeboxes/{box_id}"
    wait_http(bare_url, 60, bare.proc, bare_log, headers)
    log(f"P3: connections {args.p3_connections}, {args.p3_seconds:.0f} s x {args.p3_reps} reps")
    return p3_status(port, bare_port, box_id, headers, args)


if __name__ == "__main__":
    sys.exit(main())
