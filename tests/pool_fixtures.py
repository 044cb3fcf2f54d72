"""Fixtures and helpers for the pool tests (service, admin API, CLI).

Test modules pull the fixtures in by importing them. The sshd fleet is one per test process
(xdist worker), shared by every module that imports these fixtures, and torn down at exit
by ``BoxFleet`` itself (it registers an atexit hook).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.crypto import encrypt_str
from app.models import Server, VibeBox
from app.services.pool import ConnectionReport, Resources
from tests.factories import UserFactory
from tests.support.sshd import BoxFleet, SSHBox

BOX_PASSWORD = "box-pass-Zq7!"
# The boxes never run the Happy daemon in these tests: any URL will do.
_UNUSED_HAPPY_URL = "http://127.0.0.1:9"

_fleet: BoxFleet | None = None
_fleet_lock = threading.Lock()


def _shared_fleet() -> BoxFleet:
    global _fleet
    with _fleet_lock:
        if _fleet is None:
            _fleet = BoxFleet(_UNUSED_HAPPY_URL)
        return _fleet


@pytest.fixture(scope="session")
def pool_fleet() -> BoxFleet:
    return _shared_fleet()


@pytest.fixture
def key_box(pool_fleet: BoxFleet) -> Iterator[SSHBox]:
    """A fresh box that accepts the fleet's client key (password logins off)."""
    box = pool_fleet.new_box()
    yield box
    pool_fleet.remove(box)


@pytest.fixture
def password_box(pool_fleet: BoxFleet) -> Iterator[SSHBox]:
    """A fresh box whose user logs in with ``BOX_PASSWORD``."""
    box = pool_fleet.new_box(password=BOX_PASSWORD)
    yield box
    pool_fleet.remove(box)


def fake_fingerprint(seed: str = "a") -> str:
    return "SHA256:" + (seed * 43)[:43]


class FakeCheck:
    """A ``connect_check`` that never touches the network; records what it was asked."""

    def __init__(
        self,
        fingerprint: str | None = None,
        *,
        error: Exception | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.fingerprint = fingerprint or fake_fingerprint("f")
        self.error = error
        self.resources = resources
        self.calls: list[Any] = []

    def __call__(self, target: Any, *, detect_resources: bool = False) -> ConnectionReport:
        self.calls.append((target, detect_resources))
        if self.error is not None:
            raise self.error
        return ConnectionReport(self.fingerprint, 3, self.resources if detect_resources else None)


def make_server(session: Session, **fields: Any) -> Server:
    """A pool row without SSH (for allocation and state tests)."""
    server_id = fields.pop("id", None) or uuid.uuid4()
    values: dict[str, Any] = {
        "host": f"10.0.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}",
        "ssh_port": 22,
        "ssh_user": f"u{uuid.uuid4().hex[:8]}",
        "auth_method": "password",
        "credential_encrypted": encrypt_str(bytes(32), "x"),
        "host_key_fingerprint": fake_fingerprint(),
        "cpu_cores": 4,
        "ram_gb": 8,
        "disk_gb": 80,
        "state": "available",
    }
    values.update(fields)
    server = Server(id=server_id, **values)
    session.add(server)
    session.flush()
    return server


def make_box(session: Session, *, plan_id: str = "basic", **fields: Any) -> VibeBox:
    """A box of ``plan_id`` (seeded plans: basic 2/4/40, pro 4/8/80, enterprise 8/32/200)."""
    if "user_id" not in fields:
        fields["user_id"] = UserFactory().id
    box = VibeBox(plan_id=plan_id, status=fields.pop("status", "provisioning"), **fields)
    session.add(box)
    session.flush()
    return box
