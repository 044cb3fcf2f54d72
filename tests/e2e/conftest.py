"""End-to-end fixtures: committed data, a real worker, real sshd boxes, the Happy double.

These tests drive the system through the HTTP API exactly as clients do; the Celery
worker is a separate process, so everything the test sets up is committed, and all rows
are truncated afterwards (plans and the migration version stay).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.models import Base

TRUNCATE = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name not in {"plans"})


@pytest.fixture
def live(app, migrated_engine, celery_worker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    from app.db import SessionFactory, db_session
    from workers import celery_app

    db_session.remove()
    SessionFactory.configure(bind=migrated_engine)
    yield
    db_session.remove()
    celery_app.control.purge()
    # Tasks still in flight in the worker (or beat's sweeps) may hold row locks; TRUNCATE
    # can then lose a deadlock. Retry briefly: the worker's transactions are short.
    for attempt in range(10):
        try:
            with migrated_engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {TRUNCATE} CASCADE"))
            break
        except OperationalError:
            if attempt == 9:
                raise
            time.sleep(0.5)


_ips = count(1)


def wait_for_payment_events(timeout: float = 60.0) -> None:
    """Webhooks answer once the event is recorded; the worker applies it
    (``billing.apply_payment_event``). Wait until every recorded event is applied or
    deferred, as a client would wait for its order to turn paid."""
    from sqlalchemy import func, select

    from app.db import db_session
    from app.models import PaymentEvent

    deadline = time.monotonic() + timeout
    while True:
        left = db_session().scalar(
            select(func.count())
            .select_from(PaymentEvent)
            .where(PaymentEvent.processed_at.is_(None), PaymentEvent.note.is_(None))
        )
        db_session.remove()
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{left} payment events not applied after {timeout} s")
        time.sleep(0.05)


def _fresh_address(client: Any) -> None:
    """Pollers here wait up to minutes at 5 requests/s; the per-IP rate limit is not what
    these tests are about (tests/api covers it), so each request gets its own address."""
    n = next(_ips)
    client.environ_base["REMOTE_ADDR"] = f"10.{200 + (n >> 16) % 50}.{(n >> 8) & 255}.{n & 255}"


@dataclass
class Api:
    """A logged-in HTTP client of the real app."""

    client: Any
    headers: dict[str, str]
    user_id: uuid.UUID

    def get(self, url: str, **kw: Any) -> Any:
        _fresh_address(self.client)
        return self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, url: str, **kw: Any) -> Any:
        _fresh_address(self.client)
        response = self.client.post(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)
        if "/webhook/" in url or "/dev/checkout/" in url:
            wait_for_payment_events()
        return response

    def box(self, box_id: str) -> dict[str, Any]:
        response = self.get(f"/api/vibeboxes/{box_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["vibeBox"]

    def wait_for(self, box_id: str, statuses: set[str], timeout: float = 60.0) -> dict[str, Any]:
        """Poll like a client until the box reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        doc = self.box(box_id)
        while doc["status"] not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(f"box {box_id} still {doc['status']}: {doc}")
            time.sleep(0.2)
            doc = self.box(box_id)
        return doc


@pytest.fixture
def make_user(app, live) -> Callable[..., Api]:  # type: ignore[no-untyped-def]
    from tests.factories import UserFactory

    def make(*, admin: bool = False) -> Api:
        user = UserFactory(is_admin=admin)
        with app.app_context():
            token = create_access_token(identity=user)
        client = app.test_client()
        _fresh_address(client)
        return Api(client, {"Authorization": f"Bearer {token}"}, user.id)

    return make


@pytest.fixture
def admin(make_user) -> Api:  # type: ignore[no-untyped-def]
    return make_user(admin=True)


@pytest.fixture
def add_to_pool(app, live, settings):  # type: ignore[no-untyped-def]
    """Admit real sshd boxes to the pool through the pool service (real SSH check)."""
    from app.db import db_session
    from app.services import pool

    def add(
        *boxes: Any,
        cpu: int = 2,
        ram_gb: int = 4,
        disk_gb: int = 40,
        skip_checks: bool = False,
    ) -> list[uuid.UUID]:
        ids = []
        session = db_session()
        for b in boxes:
            server = pool.add_server(
                session,
                b.server_spec(
                    cpu_cores=cpu, ram_gb=ram_gb, disk_gb=disk_gb, label=f"test-{b.user}"
                ),
                encryption_key=settings.encryption_key,
                happy_server_url=settings.happy_server_url,
                skip_checks=skip_checks,
            )
            ids.append(server.id)
        session.commit()
        db_session.remove()
        return ids

    return add


def provision(admin: Api, user: Api, plan: str = "basic") -> str:
    response = admin.post(
        "/api/admin/provision", json={"userId": str(user.user_id), "planId": plan}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["vibeBox"]["id"]
