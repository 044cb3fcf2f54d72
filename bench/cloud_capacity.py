"""Paid-to-running with a warm cloud server vs with on-demand creation.

The same box (plan ``basic``) is provisioned through the HTTP API and a real Celery worker,
with a DigitalOcean-compatible provider served by the local DO double (the real libcloud
driver; droplets are real sshd machines on loopback, ``--boot-delay`` seconds from create to
SSH answering):

- **warm**: beat's warm-pool pass created one server and the worker brought it up before the
  order (not timed); the box takes it at once;
- **on demand**: no server; the box's allocation asks the capacity service, which creates a
  droplet, pins its host key, verifies it, and wakes the box.

Runs alternate (warm, on demand / on demand, warm) so drift hits both sides; the result is
the ratio of the medians, on demand / warm, in the same run. It measures and reports, never
asserts.

    python scripts/services.py exec -- .venv/bin/python bench/cloud_capacity.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
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
    create_scratch,
    log,
    machine_info,
    migrate,
    poll_until,
)

PLAN = "basic"
RUN_TIMEOUT = 120.0


def _servers(engine: Any) -> list[Any]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from app.models import Server

    with Session(engine) as session:
        return list(session.scalars(select(Server).where(Server.cloud_provider_id.is_not(None))))


def _warm_up_server(engine: Any, settings: Any, provider_id: uuid.UUID) -> None:
    """One warm server created and brought up by the worker (outside the timed region)."""
    from sqlalchemy.orm import Session

    from app.models import CloudProvider
    from app.services import capacity

    ctx = capacity.CapacityContext(settings, capacity.default_compute_for(settings))
    with Session(engine) as session:
        provider = session.get(CloudProvider, provider_id)
        assert provider is not None
        provider.warm_target = 1
        capacity.refill_warm_pool(session, provider, ctx, capacity.SweepReport())
        provider.warm_target = 0
        session.commit()  # publishes capacity.bring_up
    poll_until(
        lambda: any(s.state == "available" for s in _servers(engine)),
        timeout=RUN_TIMEOUT,
        what="a warm server",
        period=0.1,
    )


def _provision(bench: Bench) -> float:
    user_id, headers = bench.make_user()
    client = bench.app.test_client()
    started = time.perf_counter()
    response = client.post(
        "/api/admin/provision",
        json={"userId": str(user_id), "planId": PLAN},
        headers=bench.admin_headers,
    )
    if response.status_code != 202:
        raise BenchError(f"provision answered {response.status_code}")
    box_id = response.get_json()["vibeBox"]["id"]

    def running() -> bool:
        doc = client.get(f"/api/vibeboxes/{box_id}", headers=headers).get_json()["vibeBox"]
        if doc["status"] == "error":
            raise BenchError(f"box {box_id} failed: {doc['lastError']} ({bench.worker_log})")
        return bool(doc["status"] == "running")

    poll_until(running, timeout=RUN_TIMEOUT, what="the box running", period=0.05)
    return time.perf_counter() - started


def _reset(bench: Bench, do: Any) -> None:
    """Forget boxes and cloud servers, destroy every droplet, remove box users."""
    from sqlalchemy import text

    from app.integrations import cloud
    from tests.support.sshd import remove_product_box_users

    compute = cloud.LibcloudCompute(
        cloud.CloudAccount("digitalocean", {"key": do.token}, "nyc1", do.url)
    )
    for droplet in do.live_droplets():
        compute.destroy_node(str(droplet.id))
    with bench.engine.begin() as conn:
        conn.execute(text("DELETE FROM box_events"))
        conn.execute(text("DELETE FROM provisioning_steps"))
        conn.execute(text("DELETE FROM vibeboxes"))
        conn.execute(text("DELETE FROM happy_accounts"))
        conn.execute(text("DELETE FROM servers"))
    remove_product_box_users(os.environ["BOX_USER_PREFIX"])


def run(args: argparse.Namespace) -> int:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with contextlib.ExitStack() as stack:
        scratch = create_scratch(stack, args.redis_db)
        migrate(scratch.database_url)

        from tests.conftest import WORKER_TEST_ENV
        from tests.support.happy_double import HappyDouble
        from tests.support.sshd import box_user_prefix

        happy = stack.enter_context(HappyDouble())
        worker_env = {
            **WORKER_TEST_ENV,
            "HAPPY_SERVER_URL": happy.url,
            "BOX_USER_PREFIX": box_user_prefix(),
            "CLOUD_POLL_SECONDS": str(args.poll),
        }
        os.environ.update(
            {
                "DATABASE_URL": scratch.database_url,
                "REDIS_URL": scratch.redis_url,
                "CELERY_BROKER_URL": scratch.redis_url,
                "CELERY_RESULT_BACKEND": scratch.redis_url,
                "VIBEBOX_ENV": "testing",
                "RATELIMIT_ENABLED": "false",
                "LOG_LEVEL": "WARNING",
                **worker_env,
            }
        )
        # the workers module reads its Celery settings from this environment when imported

        from app import create_app
        from app.db import get_engine
        from app.services.capacity import cloud_providers
        from tests.support.do_double import DigitalOceanDouble
        from tests.support.sshd import BoxFleet
        from tests.support.worker import CeleryWorkerProcess

        app = create_app()
        settings = app.config["VIBEBOX_SETTINGS"]
        engine = get_engine(settings.database_url)
        fleet = stack.enter_context(BoxFleet(happy.url))
        do = stack.enter_context(DigitalOceanDouble(fleet, boot_delay=args.boot_delay))

        worker = CeleryWorkerProcess(
            RESULTS_DIR,
            concurrency=2,
            extra_env={**worker_env, "LOG_LEVEL": "INFO"},
            app_module="workers",
        )
        worker.log_path = RESULTS_DIR / f"cloud_capacity-{stamp}-worker.log"
        stack.callback(worker.stop)
        worker.start()
        bench = Bench(
            app=app, engine=engine, settings=settings, double=happy, worker_log=str(worker.log_path)
        )
        _, bench.admin_headers = bench.make_user(admin=True)

        from sqlalchemy.orm import Session

        with Session(engine) as session:
            provider = cloud_providers.add_provider(
                session,
                encryption_key=settings.encryption_key,
                credentials={"key": do.token},
                name="bench-do",
                driver="digitalocean",
                region="nyc1",
                image="ubuntu-24-04-x64",
                plan_sizes={PLAN: "s-2vcpu-4gb"},
                ssh_port=do.ssh_port,
                login_user=do.login_user,
                api_base_url=do.url,
                boot_seconds=max(1, round(args.boot_delay)),
            )
            session.commit()
            provider_id = provider.id
        stack.callback(_reset, bench, do)

        samples: dict[str, list[float]] = {"warm": [], "on_demand": []}
        total = args.warmup + args.runs
        for i in range(total):
            order = ("warm", "on_demand") if i % 2 == 0 else ("on_demand", "warm")
            for kind in order:
                _reset(bench, do)
                if kind == "warm":
                    _warm_up_server(engine, settings, provider_id)
                seconds = _provision(bench)
                if i >= args.warmup:
                    samples[kind].append(seconds)
                note = " (warm-up)" if i < args.warmup else ""
                log(f"run {i + 1}/{total} {kind}: {seconds:.2f}s{note}")

        warm, on_demand = (
            statistics.median(samples["warm"]),
            statistics.median(samples["on_demand"]),
        )
        results = {
            "benchmark": "cloud_capacity",
            "timestamp": stamp,
            "config": {
                "runs": args.runs,
                "warmup": args.warmup,
                "boot_delay_seconds": args.boot_delay,
                "cloud_poll_seconds": args.poll,
            },
            "machine": machine_info(engine, scratch.redis_url),
            "samples": samples,
            "median_warm_s": warm,
            "median_on_demand_s": on_demand,
            "ratio_on_demand_to_warm": on_demand / warm,
        }
        print(
            f"\npaid-to-running, median of {args.runs} (simulated boot delay {args.boot_delay}s):"
            f"\n  warm server   {warm:6.2f}s\n  on demand     {on_demand:6.2f}s"
            f"\n  ratio on demand / warm: {on_demand / warm:.2f}"
        )
    out = RESULTS_DIR / f"cloud_capacity-{stamp}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"results: {out.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--boot-delay", type=float, default=5.0, help="DO double: create to SSH")
    parser.add_argument("--poll", type=float, default=0.5, help="CLOUD_POLL_SECONDS")
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args(argv)
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        print(
            "error: run under scripts/services.py exec (DATABASE_URL, REDIS_URL)", file=sys.stderr
        )
        return 2
    if os.geteuid() != 0:
        print("error: the sshd machines need root", file=sys.stderr)
        return 2
    try:
        return run(args)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
