#!/usr/bin/env python3
"""P5: 100 concurrent allocations on 50 servers, ``pool.allocate_server`` against one
``UPDATE servers SET state='allocated' WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id`` per allocation, interleaved rounds, on a scratch database migrated to head.

Each round makes 50 fresh servers and 100 fresh boxes, then runs the 100 allocations from
``--threads`` threads (each its own session and connection, one transaction per
allocation) and checks the result: 50 distinct servers, each given once, 50 boxes left
waiting. Reports the median wall time per round and the ratio. Timings are reported, never
asserted.

    python scripts/services.py exec -- .venv/bin/python bench/allocation.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = """
UPDATE servers SET state = 'allocated'
WHERE id = (
    SELECT id FROM servers
    WHERE state = 'available' AND cpu_cores >= 2 AND ram_gb >= 4 AND disk_gb >= 40
    ORDER BY cpu_cores, ram_gb, disk_gb, created_at, id
    LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=12)
    args = parser.parse_args()

    from sqlalchemy import create_engine, delete, insert, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.orm import sessionmaker

    from app.config import normalize_database_url

    base = make_url(normalize_database_url(os.environ["DATABASE_URL"]))
    name = f"{base.database}_bench_alloc_{os.getpid()}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=args.threads, max_overflow=0)
    try:
        from alembic import command

        from app.crypto import encrypt_str
        from app.models import Server, User, VibeBox
        from app.services import pool
        from app.services.readiness import alembic_config

        cfg = alembic_config()
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(cfg, "head")
        Session = sessionmaker(bind=engine, expire_on_commit=False)
        user_id = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                insert(User).values(id=user_id, email="alloc@example.com", username="alloc")
            )

        def setup() -> list[uuid.UUID]:
            with engine.begin() as conn:
                conn.execute(delete(VibeBox))
                conn.execute(delete(Server))
                conn.execute(
                    insert(Server),
                    [
                        {
                            "host": f"10.9.{i // 250}.{i % 250}",
                            "ssh_port": 22,
                            "ssh_user": "root",
                            "auth_method": "password",
                            "credential_encrypted": encrypt_str(bytes(32), "x"),
                            "host_key_fingerprint": "SHA256:" + uuid.uuid4().hex,
                            "cpu_cores": 2 + (i % 3) * 2,
                            "ram_gb": 4 + (i % 3) * 4,
                            "disk_gb": 40 + (i % 3) * 40,
                            "state": "available",
                        }
                        for i in range(50)
                    ],
                )
                ids = [uuid.uuid4() for _ in range(100)]
                conn.execute(
                    insert(VibeBox),
                    [
                        {"id": i, "user_id": user_id, "plan_id": "basic", "status": "provisioning"}
                        for i in ids
                    ],
                )
            return ids

        def ours(box_id: uuid.UUID) -> Any:
            with Session() as session:  # as the step does: read the box, allocate, commit
                box = session.get(VibeBox, box_id)
                server = pool.allocate_server(session, box)
                session.commit()
                return server.id if server is not None else None

        def baseline(_box_id: uuid.UUID) -> Any:
            with engine.begin() as conn:
                return conn.execute(text(BASELINE)).scalar_one_or_none()

        times: dict[str, list[float]] = {"allocate_server": [], "baseline": []}
        runners = {"allocate_server": ours, "baseline": baseline}
        for r in range(args.rounds + 1):  # round 0 warms up
            order = list(runners) if r % 2 == 0 else list(runners)[::-1]
            for label in order:
                boxes = setup()
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=args.threads) as executor:
                    got = list(executor.map(runners[label], boxes))
                elapsed = time.perf_counter() - started
                given = [g for g in got if g is not None]
                assert len(given) == 50 and len(set(given)) == 50, (label, len(given))
                if label == "allocate_server":
                    with engine.connect() as conn:
                        held = conn.execute(
                            text(
                                "SELECT count(DISTINCT server_id), count(server_id) FROM vibeboxes"
                            )
                        ).one()
                    assert tuple(held) == (50, 50), held
                if r:
                    times[label].append(elapsed)
        ours_ms = statistics.median(times["allocate_server"]) * 1000
        base_ms = statistics.median(times["baseline"]) * 1000
        print(
            f"100 allocations on 50 servers, {args.threads} threads, median of {args.rounds}: "
            f"allocate_server {ours_ms:.0f} ms, baseline {base_ms:.0f} ms, "
            f"ratio {ours_ms / base_ms:.2f} (50 distinct allocations, no double assignment)"
        )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
