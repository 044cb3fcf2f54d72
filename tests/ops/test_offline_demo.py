"""The offline demo for real: `scripts/run.py serve` with nothing configured (no
HAPPY_SERVER_URL, an empty pool, a fresh database) starts the local Happy server and the
demo box, and the README walkthrough, done over HTTP, gets a paid box to `running`.

The stack runs on a database and a Redis of this test's own (so the pool is empty and no
other test's worker takes its tasks), on ports the kernel hands out; it is stopped by the
PID this test started, and the box users the product created are removed by their prefix.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.config import normalize_database_url
from app.devtools import demo as demo_tools
from tests.pool_fixtures import make_server
from tests.support.redis_server import RedisServer
from tests.support.sshd import remove_product_box_users

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo box logs in as root when run as root"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait(
    condition: Any, what: str, timeout: float, proc: subprocess.Popen[bytes], log: Path
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the stack exited early:\n{log.read_text()[-4000:]}"
        try:
            value = condition()
        except requests.RequestException:
            value = None
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"{what} within {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database of this test's own on the suite's PostgreSQL (no tables: `make run`
    migrates it), dropped afterwards."""
    base = make_url(normalize_database_url(os.environ["VIBEBOX_TEST_BASE_DATABASE_URL"]))
    name = f"vibebox_demo_{uuid.uuid4().hex[:10]}"
    admin = base.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (its stack's broker), stopped by its PID whatever happens."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "scripts/run.py", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C for `make run`: SIGTERM to the stack's process group, by the PID we started."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise


def _pool_rows(database_url: str) -> list[tuple[Any, ...]]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT host, ssh_port, ssh_user, label FROM servers").fetchall()


@pytest.mark.timeout(900)
def test_make_run_with_nothing_configured_gets_a_paid_dev_checkout_box_to_running(
    tmp_path: Path, fresh_database: str, redis_server: RedisServer
) -> None:
    port, flower_port, ssh_port, happy_port = (_free_port() for _ in range(4))
    redis_url = redis_server.url(0)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HAPPY_SERVER_URL", "PAYMENT_PROVIDERS", "VIBEBOX_DEMO", "METRICS_TOKEN")
        and not k.startswith(("STRIPE_", "WECHAT_", "ALIPAY_"))
    }
    env.update(
        {
            "VIBEBOX_ENV": "development",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "FLOWER_PORT": str(flower_port),
            "VIBEBOX_DEMO_SSH_PORT": str(ssh_port),
            "VIBEBOX_DEMO_HAPPY_PORT": str(happy_port),
            "VIBEBOX_VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": fresh_database,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "WEB_CONCURRENCY": "1",
            "WORKER_CONCURRENCY": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        }
    )
    log = tmp_path / "stack.log"
    base = f"http://127.0.0.1:{port}"
    proc = _start(env, log)
    try:
        _wait(lambda: requests.get(f"{base}/healthz", timeout=10).ok, "no API", 180, proc, log)
        banner = log.read_text()
        head = banner[: banner.find("Ctrl-C")]
        assert f"Happy server (local dev double) http://127.0.0.1:{happy_port}" in head, head
        assert f"Demo box ssh 127.0.0.1:{ssh_port}" in head, head
        assert "Payments: dev provider (pay on the dev checkout page)" in head, head
        assert _pool_rows(fresh_database) == [("127.0.0.1", ssh_port, "root", "vibebox-demo")]

        # The README walkthrough, step by step.
        account = {"email": "ada@example.com", "username": "ada", "password": PASSWORD}
        registered = requests.post(f"{base}/api/auth/register", json=account, timeout=30)
        assert registered.status_code == 201, registered.text
        login = requests.post(
            f"{base}/api/auth/login",
            json={"username": "ada", "password": PASSWORD},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['session']['token']}"}
        plans = requests.get(f"{base}/api/subscriptions/plans", timeout=30).json()["plans"]
        assert "basic" in [p["id"] for p in plans]
        checkout = requests.post(
            f"{base}/api/subscriptions/checkout",
            json={"planId": "basic", "billingCycle": "monthly", "provider": "dev"},
            headers=auth,
            timeout=30,
        )
        assert checkout.status_code == 201, checkout.text
        page_url = checkout.json()["checkoutUrl"]
        assert page_url.startswith(f"{base}/api/subscriptions/dev/checkout/")
        page = requests.get(page_url, timeout=30)
        assert page.status_code == 200 and "Pay" in page.text
        paid = requests.post(page_url, timeout=30, allow_redirects=False)
        assert paid.status_code < 400, paid.text

        def running_box() -> dict[str, Any] | None:
            boxes = requests.get(f"{base}/api/vibeboxes", headers=auth, timeout=30)
            assert boxes.status_code == 200, boxes.text
            found = boxes.json()["vibeBoxes"]
            assert all(b["status"] != "error" for b in found), found
            return next((b for b in found if b["status"] == "running"), None)

        box = _wait(running_box, "no box reached running", 300, proc, log)
        connect = requests.post(
            f"{base}/api/vibeboxes/{box['id']}/connect", headers=auth, timeout=30
        )
        assert connect.status_code == 200, connect.text
        assert connect.json()["secretKey"]
        happy_token = parse_qs(urlsplit(connect.json()["happyWebUrl"]).query)["token"][0]
    finally:
        _stop(proc)
        remove_product_box_users(os.environ["BOX_USER_PREFIX"])
    # Everything the demo started is gone with the stack.
    assert _port_closed(ssh_port) and _port_closed(happy_port) and _port_closed(port)

    # A second `make run` reuses the demo box's pool row (same host key, no duplicate).
    proc = _start(env, log)
    try:
        _wait(lambda: "demo box reused" in log.read_text(), "no reuse", 180, proc, log)
        assert _pool_rows(fresh_database) == [("127.0.0.1", ssh_port, "root", "vibebox-demo")]
        assert re.search(rf"Demo box ssh 127\.0\.0\.1:{ssh_port}", log.read_text())
        # The local Happy server kept the box's account (var/demo/happy-server-state.json).
        profile = requests.get(
            f"http://127.0.0.1:{happy_port}/v1/account/profile",
            headers={"Authorization": f"Bearer {happy_token}"},
            timeout=30,
        )
        assert profile.status_code == 200, profile.text
    finally:
        _stop(proc)
        remove_product_box_users(os.environ["BOX_USER_PREFIX"])
    assert _port_closed(ssh_port) and _port_closed(happy_port)

    # A server of the operator's own in the pool turns the whole demo off.
    engine = create_engine(fresh_database, poolclass=NullPool)
    try:
        with Session(engine) as session:
            make_server(session, label="mine")
            session.commit()
        started, extra = demo_tools.start_demo(env, REPO, demo_tools.plan_demo(env))
    finally:
        engine.dispose()
    assert extra == {} and "no demo: the pool has 1 server(s) of your own" in started.lines[0]
    assert _port_closed(ssh_port) and _port_closed(happy_port)
