#!/usr/bin/env python3
"""Provisioning benchmark: the system's overhead over the raw remote work it has to do.

(a) One box end to end: ``POST /api/admin/provision`` accepted (202) -> the status document
    says ``running`` (polled every 20 ms through the Flask test client), on the same sshd box
    every run. Baseline, interleaved run by run: a plain script doing the same remote work
    once against the same box (Happy ``create_account`` with a new secret; one SSH connection:
    ``check_operator``, ``ensure_user`` (a new Unix user for the box), ``write_credentials``,
    ``start_daemon``, ``read_machine_id`` as that user; then ``list_machines`` every 20 ms
    until that machine's daemon reports running). Ratio = median / median.
(b) N boxes on N servers through the worker (``-c CONCURRENCY``): first provision request ->
    all N running, vs a ``ThreadPoolExecutor(max_workers=CONCURRENCY)`` doing the same raw
    work per box. Repetitions interleaved; ratio of medians and boxes/second.

Real components only: a scratch PostgreSQL database (``<db>_bench_<pid>``, ``alembic
upgrade head``, dropped at the end), its own Redis logical database, the Happy double
in-process, real OpenSSH boxes on 127.0.0.1 (``BoxFleet``, needs root) and a real ``celery
worker`` process with the test suite's fast-retry settings. Everything is stopped at the end,
also on Ctrl-C / SIGTERM. Timings are reported, never asserted.

    python scripts/services.py exec -- .venv/bin/python bench/provision.py \
        [--runs 10] [--boxes 8] [--concurrency 4] [--reps 5] [--warmup 2] [--redis-db 15]

Needs DATABASE_URL and REDIS_URL (``services.py exec`` provides embedded ones). Results:
a table on stdout and ``bench/results/provision-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - after the path set-up
    POLL_SECONDS,
    RESULTS_DIR,
    Bench,
    create_scratch,
    guarded_main,
    log,
    machine_info,
    migrate,
    part_a,
    part_b,
)

# --- output ------------------------------------------------------------------------------------


def _row(label: str, s: dict[str, Any]) -> str:
    return (
        f"  {label:<30} {s['median_ms']:>9.0f} {s['p90_ms']:>9.0f} {s['min_ms']:>9.0f}"
        f" {s['max_ms']:>9.0f}"
    )


def _breakdown_lines(part: dict[str, Any], *, per_box: bool = False) -> str:
    def line(key: str) -> str:
        return ", ".join(
            f"{k.removesuffix('_s')} {v:.0f}" for k, v in part[key].items() if v is not None
        )

    scope = "median ms per box" if per_box else "median ms"
    return (
        f"  system, {scope}: {line('system_breakdown_median_ms')}\n"
        f"  baseline, {scope}: {line('baseline_breakdown_median_ms')}"
    )


def _cpu_line(cpu: dict[str, dict[str, float | None]]) -> str:
    def one(side: str) -> str:
        c = cpu[side]
        return (
            f"{side} machine {c['machine_cpu_s'] or 0:.0f} (this process "
            f"{c['bench_process_cpu_s'] or 0:.0f}, worker {c['worker_cpu_s'] or 0:.0f})"
        )

    return f"  CPU ms used, medians: {one('system')}; {one('baseline')}"


def print_table(results: dict[str, Any]) -> None:
    a, b, m = results["a"], results["b"], results["machine"]
    head = f"  {'':<30} {'median':>9} {'p90':>9} {'min':>9} {'max':>9}   (ms)"
    print()
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), python {m['python']}, "
        f"PostgreSQL {m['postgres']}, Redis {m['redis']}"
    )
    print(f"\n(a) one box, provision -> running, {a['runs']} runs (+{a['warmup']} warm-up)")
    print(head)
    print(_row("system (202 -> running)", a["system_from_accept"]))
    print(_row("system (POST -> running)", a["system_from_request"]))
    print(_row("  of which POST -> 202", a["post_latency"]))
    print(_row("baseline (raw remote work)", a["baseline"]))
    print(
        f"  ratio median(system)/median(baseline): {a['ratio']:.2f}x "
        f"({a['ratio_from_request']:.2f}x counting the POST)"
    )
    print(_row("system (POST -> last step done)", a["system_last_step_done"]))
    print(_breakdown_lines(a))
    print(_cpu_line(a["cpu_median_ms"]))
    print(
        f"\n(b) {b['boxes']} boxes on {b['boxes']} servers, concurrency {b['concurrency']}, "
        f"{b['reps']} reps (+{b['warmup']} warm-up), first request -> all running"
    )
    print(head)
    print(_row("system (API + worker -c N)", b["system"]))
    print(_row("baseline (thread pool)", b["baseline"]))
    print(
        f"  ratio median(system)/median(baseline): {b['ratio']:.2f}x; boxes/s: system "
        f"{b['system_boxes_per_s']:.2f}, baseline {b['baseline_boxes_per_s']:.2f}"
    )
    print(_row("system (POST -> last step done)", b["system_last_step_done"]))
    print(_breakdown_lines(b, per_box=True))
    print(_cpu_line(b["cpu_median_ms"]))
    print()


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="(a) measured runs (default 10)")
    parser.add_argument("--boxes", type=int, default=8, help="(b) boxes/servers N (default 8)")
    parser.add_argument("--concurrency", type=int, default=4, help="worker -c and pool size")
    parser.add_argument("--reps", type=int, default=5, help="(b) measured repetitions")
    parser.add_argument(
        "--warmup", type=int, default=2, help="(a) unmeasured runs first; (b) gets min(1, this)"
    )
    parser.add_argument("--redis-db", type=int, default=15, help="Redis logical db (default 15)")
    parser.add_argument(
        "--system-poll-ms",
        type=float,
        default=POLL_SECONDS * 1000,
        help="diagnostic: period of the status-document pollers (default 20; the baseline's "
        "list_machines poll stays at 20 ms, it is part of the raw work)",
    )
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="the worker runs with the shipped defaults (app/config.py) instead of the test "
        "suite's fast-retry settings",
    )
    parser.add_argument(
        "--pool", default="prefork", help="the worker's Celery pool (prefork, threads)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.boxes < 1 or args.concurrency < 1 or args.reps < 1:
        parser.error("--runs, --boxes, --concurrency and --reps must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded_main(lambda: run(args), "provision.py")


def run(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scratch = create_scratch(stack, args.redis_db)
        log(f"scratch database {scratch.database_name}, Redis {scratch.redis_url}")
        migrate(scratch.database_url)

        from app.devtools.happy_server import HappyDouble
        from tests.conftest import WORKER_TEST_ENV  # the suite's fast-retry settings

        double = stack.enter_context(HappyDouble())
        worker_env = {
            **({} if args.shipped else WORKER_TEST_ENV),
            "HAPPY_SERVER_URL": double.url,
            # Reuse a connection between the steps of one box (milliseconds apart) but not
            # across runs on the same sshd box: production boxes are different servers.
            "SSH_POOL_MAX_IDLE_SECONDS": "0.25",
        }
        os.environ.update(
            {
                "DATABASE_URL": scratch.database_url,
                "REDIS_URL": scratch.redis_url,
                "CELERY_BROKER_URL": scratch.redis_url,
                "CELERY_RESULT_BACKEND": scratch.redis_url,
                "VIBEBOX_ENV": "testing",
                # The API under test is polled every 20 ms: per-IP limits would answer 429.
                "RATELIMIT_ENABLED": "false",
                "LOG_LEVEL": "WARNING",  # this process; the worker logs INFO to its file
                **worker_env,
            }
        )
        # the workers module reads its Celery settings from this environment when imported

        from app import create_app
        from app.db import get_engine
        from tests.support.sshd import BoxFleet
        from tests.support.worker import CeleryWorkerProcess

        app = create_app()
        settings = app.config["VIBEBOX_SETTINGS"]
        engine = get_engine(settings.database_url)

        fleet = stack.enter_context(BoxFleet(double.url))
        log(f"starting {args.boxes} sshd boxes")
        boxes = fleet.start(args.boxes)

        worker = CeleryWorkerProcess(
            RESULTS_DIR,
            concurrency=args.concurrency,
            pool=args.pool,
            extra_env={**worker_env, "LOG_LEVEL": "INFO"},
            app_module="workers",
        )
        worker.log_path = RESULTS_DIR / f"provision-{stamp}-worker.log"
        stack.callback(worker.stop)
        log(f"starting celery worker -P {args.pool} -c {args.concurrency} (log: {worker.log_path})")
        worker.start()

        bench = Bench(
            app=app,
            engine=engine,
            settings=settings,
            double=double,
            worker_log=str(worker.log_path),
            worker_pgid=worker.proc.pid if worker.proc else None,
            status_poll_seconds=args.system_poll_ms / 1000,
        )
        _, bench.admin_headers = bench.make_user(admin=True)
        machine = machine_info(engine, scratch.redis_url)

        # (a) the first box alone in the pool
        bench.admit(boxes[:1])
        log(f"(a) one box end to end: {args.runs} runs + {args.warmup} warm-up")
        a = part_a(bench, boxes[0], args.runs, args.warmup)

        # (b) all N boxes in the pool
        bench.admit(boxes[1:])
        b_warmup = min(1, args.warmup)
        log(f"(b) {args.boxes} boxes, concurrency {args.concurrency}: {args.reps} reps")
        b = part_b(bench, boxes, args.concurrency, args.reps, b_warmup)

        results = {
            "benchmark": "provision",
            "timestamp": stamp,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "config": {
                "runs": args.runs,
                "boxes": args.boxes,
                "concurrency": args.concurrency,
                "reps": args.reps,
                "warmup": args.warmup,
                "poll_seconds": POLL_SECONDS,
                "system_poll_seconds": args.system_poll_ms / 1000,
                "shipped_defaults": args.shipped,
                "pool": args.pool,
                "worker_env": {k: v for k, v in worker_env.items() if k != "HAPPY_SERVER_URL"},
            },
            "machine": machine,
            "a": a,
            "b": b,
            "worker_log": str(worker.log_path.relative_to(ROOT)),
            "wall_seconds": None,
        }
        print_table(results)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    out = RESULTS_DIR / f"provision-{stamp}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"results: {out.relative_to(ROOT)} ({results['wall_seconds']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
