#!/usr/bin/env python3
"""P3: status polls ``GET /api/vibeboxes/<id>`` against a bare endpoint, interleaved.

Both are served by gunicorn with the shipped config (``-c python:app.gunicorn_config``,
gthread, ``--workers 2`` as in the Procfile) on a scratch database migrated to head and its
own Redis db: the API (rate limiter on, STATUS_RATELIMIT raised so the bench is never
refused; token blocklist checked as shipped) and ``bench/status_bare_app.py`` (PyJWT decode
plus one primary-key SELECT). One user, one box with its five steps. For each connection
count, rounds of ``--seconds`` alternate API / baseline (order flipped every round); each
connection is a keep-alive HTTP/1.1 client thread. Modes: ``304`` (the client sends the
ETag it has: the common poll) and ``200`` (no ETag: the whole document). Reports req/s,
p50/p99 latency and the ratio API/baseline. Timings are reported, never asserted.

    python scripts/services.py exec -- .venv/bin/python bench/status_poll.py \
        [--seconds 3] [--rounds 3] [--connections 1,8,32] [--app-root DIR]

``--app-root`` serves the API from another checkout (e.g. ``git archive`` of an older
commit unpacked in /tmp) to measure before/after with the same harness.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn on {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn on {port} did not listen in {timeout} s")


def gunicorn(app_spec: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:app.gunicorn_config",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--no-control-socket",
        app_spec,
    ]
    log = open(ROOT / "var" / "log" / f"bench-status-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    wait_listening(port, proc)
    return proc


def load(
    port: int, path: str, headers: dict[str, str], connections: int, seconds: float
) -> tuple[int, list[float], int]:
    """Requests done, their latencies (s), and unexpected answers, over ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    bad = [0] * connections
    start = threading.Barrier(connections + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start.wait()
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies[i].append(time.perf_counter() - began)
            if response.status not in (200, 304):
                bad[i] += 1
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    start.wait()
    for thread in threads:
        thread.join()
    flat = [x for per in latencies for x in per]
    return len(flat), flat, sum(bad)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,8,32")
    parser.add_argument("--modes", default="304,200")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--app-root", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.config import normalize_database_url

    base = make_url(normalize_database_url(os.environ["DATABASE_URL"]))
    name = f"{base.database}_bench_status_{os.getpid()}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    redis_root = os.environ["REDIS_URL"].rsplit("/", 1)[0]
    env = {
        **os.environ,
        "DATABASE_URL": base.set(database=name).render_as_string(hide_password=False),
        "REDIS_URL": f"{redis_root}/{args.redis_db}",
        "VIBEBOX_ENV": "development",
        "STATUS_RATELIMIT": "1000000 per minute",
        "JWT_SECRET_KEY": "bench-status-poll-jwt-secret-0123456789abcdef",
        "PYTHONPATH": str(args.app_root),
    }
    os.environ.update(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        from alembic import command
        from flask_jwt_extended import create_access_token

        from app import create_app
        from app.db import db_session
        from app.models import ProvisioningStep, User, VibeBox
        from app.services.boxes.provisioning import STEPS
        from app.services.readiness import alembic_config

        cfg = alembic_config()
        cfg.set_main_option("sqlalchemy.url", env["DATABASE_URL"].replace("%", "%%"))
        command.upgrade(cfg, "head")
        app = create_app()
        with app.app_context():
            session = db_session()
            user = User(email="poller@example.com", username="poller")
            session.add(user)
            session.flush()
            box = VibeBox(
                user_id=user.id,
                plan_id="basic",
                status="provisioning",
                step=STEPS[2],
                steps=[
                    ProvisioningStep(name=n, position=i, state="succeeded" if i < 2 else "pending")
                    for i, n in enumerate(STEPS)
                ],
            )
            session.add(box)
            session.commit()
            box_id: uuid.UUID = box.id
            token = create_access_token(identity=str(user.id))
            db_session.remove()

        api_port, bare_port = free_port(), free_port()
        procs.append(gunicorn("app:create_app()", api_port, env, args.app_root))
        procs.append(gunicorn("bench.status_bare_app:app", bare_port, env, ROOT))
        auth = {"Authorization": f"Bearer {token}"}
        api_path, bare_path = f"/api/vibeboxes/{box_id}", f"/bare/{box_id}"
        # Workers build the app on their first request (slow on a loaded machine).
        probe = http.client.HTTPConnection("127.0.0.1", api_port, timeout=120)
        probe.request("GET", api_path, headers=auth)
        first = probe.getresponse()
        first.read()
        assert first.status == 200, first.status
        etag = first.getheader("ETag") or ""
        probe.close()

        results: dict[str, Any] = {}
        for mode in args.modes.split(","):
            api_headers = {**auth, "If-None-Match": etag} if mode == "304" else auth
            for connections in (int(c) for c in args.connections.split(",")):
                load(api_port, api_path, api_headers, connections, 0.5)  # warm both
                load(bare_port, bare_path, auth, connections, 0.5)
                runs: dict[str, list[Any]] = {"api": [], "bare": []}
                for r in range(args.rounds):
                    order = [
                        ("api", api_port, api_path, api_headers),
                        ("bare", bare_port, bare_path, auth),
                    ]
                    for label, port, path, headers in order if r % 2 == 0 else order[::-1]:
                        runs[label].append(load(port, path, headers, connections, args.seconds))
                row: dict[str, Any] = {}
                for label, done in runs.items():
                    lat = [x for _, seen, _ in done for x in seen]
                    row[label] = {
                        "rps": sum(n for n, _, _ in done) / (args.seconds * args.rounds),
                        "p50_ms": p(lat, 0.50),
                        "p99_ms": p(lat, 0.99),
                        "bad": sum(b for _, _, b in done),
                    }
                row["ratio"] = row["api"]["rps"] / row["bare"]["rps"]
                results[f"{mode}@{connections}"] = row
                print(
                    f"mode {mode} conns {connections:>2}: api {row['api']['rps']:7.0f} req/s "
                    f"p50 {row['api']['p50_ms']:6.1f} p99 {row['api']['p99_ms']:6.1f} ms | "
                    f"bare {row['bare']['rps']:7.0f} req/s p50 {row['bare']['p50_ms']:6.1f} "
                    f"p99 {row['bare']['p99_ms']:6.1f} ms | ratio {row['ratio']:.2f} "
                    f"| non-2xx/304 {row['api']['bad']}+{row['bare']['bad']}",
                    flush=True,
                )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        from app.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
