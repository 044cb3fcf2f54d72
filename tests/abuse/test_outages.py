"""Reproducers of the "Hardening" outage findings, against real processes.

- Redis down: the API (gunicorn, as `make run` serves it) on a Redis server of the test's own
  that the test stops by PID: nothing answers 500; plans, status polls and webhooks keep
  working; sessions fail closed (503 + Retry-After); logout does not pretend. Redis back: all
  of it recovers.
- /metrics and /readyz?workers=1 are behind METRICS_TOKEN and METRICS_RATELIMIT.
- Broker restarts: a real worker on its own Redis survives restarts while tasks flow.
- `make run`: the stack rides out Redis restarts and a crashed worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.crypto import encrypt_str
from app.models import Base, PaymentEvent, Server, VibeBox
from app.services import billing, jobs
from app.services.boxes import engine, happy_accounts
from tests.conftest import METRICS_AUTH, METRICS_TOKEN
from tests.support.api_server import ApiServer
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

PASSWORD = "outage-Test-passphrase-2024!"
TRUNCATE = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name not in {"plans"})


# --------------------------------------------------------------------------- Redis down


@pytest.fixture
def committed(migrated_engine: Engine) -> Iterator[Engine]:
    """The API process commits for real: leave the test database as we found it."""
    yield migrated_engine
    with migrated_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TRUNCATE} CASCADE"))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def api_on_own_redis(
    redis_server: RedisServer, committed: Engine, tmp_path: Path
) -> Iterator[ApiServer]:
    url = redis_server.url(0)
    env = {
        "REDIS_URL": url,
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "VIBEBOX_ENV": "testing",
        "PAYMENT_PROVIDERS": "dev",
        "LOG_LEVEL": "INFO",
    }
    with ApiServer(tmp_path, env) as server:
        yield server


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _running_box_with_credentials(engine: Engine, settings: Settings, user_id: str) -> str:
    """A running box whose status document carries the Happy credentials (connectionInfo)."""
    with Session(engine) as session:
        owner = uuid.UUID(user_id)
        happy_accounts.reserve_account(session, owner, settings.encryption_key)
        happy_accounts.store_token(session, owner, "happy-token-secret", settings.encryption_key)
        server = Server(
            host=f"10.77.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}",
            ssh_port=22,
            ssh_user=f"u{uuid.uuid4().hex[:8]}",
            auth_method="password",
            credential_encrypted=encrypt_str(bytes(32), "x"),
            host_key_fingerprint="SHA256:" + "d" * 43,
            cpu_cores=2,
            ram_gb=4,
            disk_gb=40,
            state="allocated",
        )
        session.add(server)
        session.flush()
        box = VibeBox(user_id=owner, plan_id="basic", status="running", server_id=server.id)
        session.add(box)
        session.commit()
        return str(box.id)


def _assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable", response.text
    assert response.json()["message"]
    assert int(response.headers["Retry-After"]) > 0


def test_redis_outage_keeps_reads_and_payments_working_and_fails_sessions_closed(
    api_on_own_redis: ApiServer,
    redis_server: RedisServer,
    committed: Engine,
    settings: Settings,
) -> None:
    api = api_on_own_redis
    seen: list[requests.Response] = []

    def call(method: str, path: str, **kw: Any) -> requests.Response:
        response = api.request(method, path, **kw)
        seen.append(response)
        return response

    # --- before the outage: an account, an open order, a running box, a second session
    name = f"outage{uuid.uuid4().hex[:10]}"
    registered = call(
        "POST",
        "/api/auth/register",
        json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
    )
    assert registered.status_code == 201, registered.text
    user_id = registered.json()["user"]["id"]
    owner = _bearer(registered.json()["session"]["token"])

    started = call(
        "POST",
        "/api/subscriptions/checkout",
        json={"planId": "basic", "billingCycle": "monthly", "provider": "dev"},
        headers=owner,
    )
    assert started.status_code == 201, started.text
    order_id = started.json()["orderId"]
    pay = "/" + started.json()["checkoutUrl"].split("://", 1)[1].split("/", 1)[1]
    running_box = _running_box_with_credentials(committed, settings, user_id)
    before = call("GET", f"/api/vibeboxes/{running_box}", headers=owner)
    assert before.status_code == 200
    assert before.json()["vibeBox"]["connectionInfo"]["happyWebUrl"]
    second = call("POST", "/api/auth/login", json={"username": name, "password": PASSWORD})
    assert second.status_code == 200, second.text
    to_log_out = _bearer(second.json()["session"]["token"])

    # --- Redis goes away
    redis_server.stop()
    assert not redis_server.ping()

    assert call("GET", "/healthz").status_code == 200
    ready = call("GET", "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"].startswith("unreachable")
    assert ready.json()["checks"]["database"] == "ok"

    # Anonymous reads from PostgreSQL keep answering; the limiter fails open (in memory).
    for _ in range(3):
        plans = call("GET", "/api/subscriptions/plans")
        assert plans.status_code == 200, plans.text
        assert {p["id"] for p in plans.json()["plans"]} >= {"basic", "pro"}

    # The owner's status polls keep answering - without the credentials in connectionInfo,
    # since the session could not be checked against the blocklist.
    listed = call("GET", "/api/vibeboxes", headers=owner)
    assert listed.status_code == 200, listed.text
    assert [b["id"] for b in listed.json()["vibeBoxes"]] == [running_box]
    detail = call("GET", f"/api/vibeboxes/{running_box}", headers=owner)
    assert detail.status_code == 200, detail.text
    assert detail.json()["vibeBox"]["status"] == "running"
    assert detail.json()["vibeBox"]["connectionInfo"] is None
    assert "happy-token-secret" not in detail.text
    order = call("GET", f"/api/orders/{order_id}", headers=owner)
    assert order.status_code == 200 and order.json()["status"] == "pending"

    # Everything else that needs a session fails closed: 503 with Retry-After.
    _assert_unavailable(call("GET", "/api/subscriptions", headers=owner))
    _assert_unavailable(call("GET", "/api/auth/session", headers=owner))
    _assert_unavailable(
        call("POST", f"/api/vibeboxes/{running_box}/connect", json={}, headers=owner)
    )
    _assert_unavailable(
        call("POST", "/api/auth/login", json={"username": name, "password": PASSWORD})
    )
    other = f"outage{uuid.uuid4().hex[:10]}"
    _assert_unavailable(
        call(
            "POST",
            "/api/auth/register",
            json={"email": f"{other}@example.com", "username": other, "password": PASSWORD},
        )
    )
    # Logout cannot revoke the token now, and says so: 503, no cookie cleared.
    logout = call("POST", "/api/auth/logout", headers=to_log_out)
    _assert_unavailable(logout)
    assert "Set-Cookie" not in logout.headers

    # A payment arriving now is recorded and acknowledged; applying it waits for the
    # reconciler (its task could not be enqueued): the order is still pending meanwhile.
    paid = call("POST", pay)
    assert paid.status_code == 303, paid.text  # to the return URL
    order = call("GET", f"/api/orders/{order_id}", headers=owner)
    assert order.status_code == 200 and order.json()["status"] == "pending", order.text
    with Session(committed) as session:
        event_id = session.scalar(
            select(PaymentEvent.id).where(PaymentEvent.order_id == uuid.UUID(order_id))
        )
        assert event_id in billing.unapplied_events(session, older_than=-60)  # next sweep's
        # What the re-sent task does; the box's first step it enqueues is not published
        # (the broker is down for the API; this process's broker is not that one).
        jobs.set_publisher(lambda _job: None)
        try:
            billing.apply_recorded_event(session, event_id)
            session.commit()
        finally:
            jobs.set_publisher(None)
    order = call("GET", f"/api/orders/{order_id}", headers=owner)
    assert order.json()["status"] == "paid", order.text
    new_box = order.json()["vibeBoxId"]
    assert new_box
    assert call("GET", f"/api/vibeboxes/{new_box}", headers=owner).json()["vibeBox"]["status"] == (
        "pending"
    )
    with Session(committed) as session:
        stuck = {r.box_id: r.step for r in engine.stranded(session, older_than=-60)}
    assert uuid.UUID(new_box) in stuck  # the reconciler's next sweep enqueues its chain

    assert [r for r in seen if r.status_code >= 500 and r.status_code != 503] == []
    log = api.tail(200_000)
    assert "Rate limit storage unreachable - falling back to in-memory storage" in log
    assert f"could not publish PaymentJob(event_id='{event_id}'" in log  # the reconciler resends it

    # --- Redis is back (same data): sessions work again, the token logged out is revoked
    redis_server.start()
    login = wait_until(
        lambda: (
            r
            if (
                r := call("POST", "/api/auth/login", json={"username": name, "password": PASSWORD})
            ).status_code
            == 200
            else None
        ),
        60,
        "login after Redis came back",
    )
    assert login.json()["session"]["token"]
    # The logout that failed did not revoke anything: the token still works ...
    assert call("GET", "/api/auth/session", headers=to_log_out).json()["user"]["id"] == user_id
    # ... until a logout that succeeds.
    assert call("POST", "/api/auth/logout", headers=to_log_out).status_code == 200
    revoked = call("GET", "/api/auth/session", headers=to_log_out)
    assert revoked.status_code == 401 and revoked.json()["code"] == "token_revoked"
    again = call("GET", f"/api/vibeboxes/{running_box}", headers=owner)
    assert again.json()["vibeBox"]["connectionInfo"]["happyWebUrl"]
    assert call("GET", "/api/subscriptions", headers=owner).status_code == 200
    assert wait_until(
        lambda: call("GET", "/readyz").status_code == 200, 60, "readyz after Redis came back"
    )
    assert [r for r in seen if r.status_code >= 500 and r.status_code != 503] == []
    assert "Traceback" not in api.tail(200_000), api.tail()


# --------------------------------------------------------------------------- metrics


@pytest.fixture
def metrics_settings(app: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def use(**changes: Any) -> Settings:
        patched = replace(settings, **changes)
        monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", patched)
        return patched

    return use


def test_metrics_need_the_metrics_token(client: Any) -> None:
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.get_json()["code"] == "metrics_token_required"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}x"})
    assert wrong.status_code == 401
    assert client.get("/metrics", headers={"Authorization": METRICS_TOKEN}).status_code == 401
    ok = client.get("/metrics", headers=METRICS_AUTH)
    assert ok.status_code == 200
    assert "vibebox_boxes" in ok.get_data(as_text=True)


def test_without_a_token_metrics_are_open_in_development_only(
    client: Any, metrics_settings
) -> None:  # type: ignore[no-untyped-def]
    metrics_settings(metrics_token=None)
    closed = client.get("/metrics")
    assert closed.status_code == 403
    assert closed.get_json()["code"] == "metrics_disabled"
    assert client.get("/readyz?workers=1").get_json()["code"] == "metrics_disabled"
    metrics_settings(metrics_token=None, env="development")
    assert client.get("/metrics").status_code == 200


def test_plain_readyz_stays_public_but_the_worker_round_trip_needs_the_token(client: Any) -> None:
    assert client.get("/readyz").status_code == 200
    probe = client.get("/readyz?workers=1")
    assert probe.status_code == 401
    assert probe.get_json()["code"] == "metrics_token_required"
    wrong = client.get("/readyz?workers=true", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_metrics_and_the_worker_round_trip_are_rate_limited(client: Any, metrics_settings) -> None:  # type: ignore[no-untyped-def]
    metrics_settings(metrics_ratelimit="3 per minute")
    answers = [client.get("/metrics", headers=METRICS_AUTH).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    limited = client.get("/metrics", headers=METRICS_AUTH)
    assert limited.get_json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    # Wrong tokens count too (no free guessing), and the probe has the same budget.
    probes = [client.get("/readyz?workers=1").status_code for _ in range(4)]
    assert probes == [401, 401, 401, 429]
    # Plain /readyz is never limited.
    assert {client.get("/readyz").status_code for _ in range(5)} == {200}


# --------------------------------------------------------------------------- broker restarts


def _probe(client: Any) -> dict[str, Any] | None:
    try:
        return client.send_task("maintenance.probe_worker", expires=10).get(timeout=5)  # type: ignore[no-any-return]
    except Exception:
        return None


@pytest.mark.e2e  # starts its own worker
def test_worker_survives_broker_restarts_while_tasks_flow(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    """A real worker on its own Redis; the test restarts that Redis 4 times (graceful and
    killed, short and longer than the worker's 2 s reconnect interval) while late-acknowledged
    tasks run. The worker must still be alive and executing tasks afterwards."""
    from tests.support.worker import CeleryWorkerProcess

    broker = RedisServer(tmp_path / "broker").start()
    worker = CeleryWorkerProcess(tmp_path, concurrency=2, redis_url=broker.url(0))
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        client = worker.client()
        while not stop.is_set():
            try:
                client.send_task("tests.nap", args=[0.3], ignore_result=True, expires=60)
                sent[0] += 1
            except Exception:
                time.sleep(0.2)  # broker down: the worker's problem is what is tested here
            stop.wait(0.1)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        worker.start()
        assert _probe(worker.client()), worker.tail()
        producer.start()
        for down_for, hard in ((0.5, False), (3.0, True), (1.0, False), (5.0, True)):
            wait_until(lambda: sent[0] > 5, 60, "tasks flowing")
            broker.restart(hard=hard, down_for=down_for)
            sent[0] = 0
            # Back at work: it takes and runs tasks again (a probe round trip).
            answer = wait_until(lambda: _probe(worker.client()), 120, "a probe round trip")
            assert answer["database"] == "ok"
            assert worker.alive(), worker.tail()
        stop.set()
        producer.join(timeout=10)
        assert worker.alive(), worker.tail()
        log = worker.log_path.read_text(errors="replace")
        assert "Unrecoverable error" not in log, worker.tail(120)
        assert log.count("Connection to broker lost") >= 4  # it really lived through them
    finally:
        stop.set()
        worker.stop()
        broker.stop()


# --------------------------------------------------------------------------- make run

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).decode(errors="replace").split("\0")
    except OSError:
        return []


def _is_celery_worker(pid: int) -> bool:
    argv = _cmdline(pid)
    return len(argv) > 2 and argv[1].endswith("/celery") and "worker" in argv


def _worker_main_pid(stack_pid: int) -> int | None:
    """The provisioning `celery worker` main process of `make run` (the test's own stack): a
    celery worker named worker@%h whose parent is not one (its pool processes, if any, are
    its children)."""
    stack = [stack_pid]
    while stack:
        pid = stack.pop()
        for child in _children(pid):
            # The Procfile's `worker` (-n worker@%h), not its `maintenance` worker.
            if (
                _is_celery_worker(child)
                and not _is_celery_worker(pid)
                and "worker@%h" in _cmdline(child)
            ):
                return child
            stack.append(child)
    return None


def _ready_with_worker(base: str) -> bool:
    try:
        response = requests.get(f"{base}/readyz?workers=1", headers=METRICS_AUTH, timeout=30)
        return response.status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.e2e  # the whole `make run` stack, its worker included
@pytest.mark.ops
def test_make_run_survives_redis_restarts_and_a_crashed_worker(
    migrated_engine: Engine, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The incident: a Redis restart killed the worker and honcho then stopped the whole
    stack. Now the stack rides out Redis restarts, and a worker that dies anyway is
    restarted while the API keeps serving."""
    port, flower_port = ApiServer.free_port(), ApiServer.free_port()
    url = redis_server.url(0)
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FLOWER_PORT": str(flower_port),
        "VIBEBOX_ENV": "development",
        "VIBEBOX_DEMO": "0",  # not about the offline demo (tests/ops/test_offline_demo.py)
        "WEB_CONCURRENCY": "1",
        "WORKER_CONCURRENCY": "1",
        "REDIS_URL": url,
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),  # not this process's
    }
    log = tmp_path / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "scripts/run.py", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def alive() -> bool:
        assert proc.poll() is None, f"the stack exited:\n{log.read_text()[-4000:]}"
        return True

    try:
        wait_until(lambda: alive() and _ready_with_worker(base), 120, "the stack ready")
        for down_for, hard in ((1.0, False), (4.0, True)):
            redis_server.restart(hard=hard, down_for=down_for)
            wait_until(lambda: alive() and _ready_with_worker(base), 120, "ready after restart")
        first = wait_until(lambda: _worker_main_pid(proc.pid), 30, "the worker's pid")
        os.kill(first, signal.SIGKILL)  # a worker that dies anyway (our own stack's process)
        second = wait_until(
            lambda: alive() and (pid := _worker_main_pid(proc.pid)) not in (None, first) and pid,
            60,
            "a restarted worker",
        )
        assert second != first
        wait_until(lambda: alive() and _ready_with_worker(base), 120, "ready after the crash")
        assert requests.get(f"{base}/api/subscriptions/plans", timeout=10).status_code == 200
        flower = requests.get(f"http://127.0.0.1:{flower_port}/", timeout=10)
        assert flower.status_code == 200
        assert "worker exited with status 137; restarting it" in log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already when the test failed
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert "Unrecoverable error" not in log.read_text()
