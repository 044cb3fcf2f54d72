#!/usr/bin/env python3
"""Login timing: does a failed login take as long for an unknown account as for a known one?

Against the real app (in-process, Flask test client) on a scratch PostgreSQL database and
its own Redis db, with the production bcrypt cost (``BCRYPT_ROUNDS``, default 12): one
registered user; then N interleaved failed logins each of (a) that user with a wrong
password and (b) an unknown username, every request from a fresh client address and under
a fresh account name for (b) so neither limit nor throttle is involved. Reports the medians
and their ratio (unknown / existing); a ratio near 1.0 means the answer time says nothing
about whether the account exists. Timings are reported, never asserted.

    python scripts/services.py exec -- .venv/bin/python bench/login_timing.py [--samples 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app.config import normalize_database_url

    base = make_url(normalize_database_url(os.environ["DATABASE_URL"]))
    name = f"{base.database}_bench_login_{os.getpid()}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    redis_root = os.environ["REDIS_URL"].rsplit("/", 1)[0]
    os.environ.update(
        {
            "DATABASE_URL": base.set(database=name).render_as_string(hide_password=False),
            "REDIS_URL": f"{redis_root}/{args.redis_db}",
            "VIBEBOX_ENV": "development",
            "BCRYPT_ROUNDS": os.environ.get("BCRYPT_ROUNDS", "12"),
            "RATELIMIT_ENABLED": "false",
        }
    )
    try:
        from alembic import command

        from app import create_app
        from app.services.readiness import alembic_config

        cfg = alembic_config()
        cfg.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))
        command.upgrade(cfg, "head")
        app = create_app(overrides={"RATELIMIT_ENABLED": False})
        client = app.test_client()
        user = f"bench{uuid.uuid4().hex[:8]}"
        password = "a-Long enough bench passphrase 7"  # noqa: S105 - a throwaway bench user
        response = client.post(
            "/api/auth/register",
            json={"email": f"{user}@example.com", "username": user, "password": password},
        )
        assert response.status_code == 201, response.get_data(as_text=True)

        def failed_login(username: str, n: int) -> float:
            client.environ_base["REMOTE_ADDR"] = f"10.77.{n // 250}.{n % 250}"
            started = time.perf_counter()
            answer = client.post(
                "/api/auth/login", json={"username": username, "password": "wrong password!"}
            )
            elapsed = time.perf_counter() - started
            assert answer.status_code == 401, answer.get_data(as_text=True)
            return elapsed

        failed_login(user, 0)  # warm-up: the dummy hash is made once per process
        failed_login("nobody-warmup", 1)
        existing, unknown = [], []
        for i in range(args.samples):
            pair = [
                ("existing", lambda i=i: failed_login(user, 2 * i + 10)),
                ("unknown", lambda i=i: failed_login(f"nobody{uuid.uuid4().hex[:8]}", 2 * i + 11)),
            ]
            if i % 2:
                pair.reverse()
            for kind, call in pair:
                (existing if kind == "existing" else unknown).append(call())
            # The known account's per-account throttle must not kick in: a success resets it.
            client.post("/api/auth/login", json={"username": user, "password": password})
        e, u = statistics.median(existing) * 1000, statistics.median(unknown) * 1000
        print(f"BCRYPT_ROUNDS={os.environ['BCRYPT_ROUNDS']}, {args.samples} samples each")
        print(f"  existing user, wrong password: median {e:.1f} ms")
        print(f"  unknown user:                  median {u:.1f} ms")
        print(f"  ratio unknown/existing: {u / e:.2f}")
        return 0
    finally:
        from app.db import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
