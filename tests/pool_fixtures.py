"""Fixtures and helpers for the pool tests (service, admin API, CLI).

Test modules pull the fixtures in by importing them. The sshd fleet is one per test process
(xdist worker), shared by every module that imports these fixtures, and torn down at exit
by ``BoxFleet`` itself (it registers an atexit hook).
"""

from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.crypto import encrypt_str
from app.models import Server, VibeBox
from app.services.pool import ConnectionReport, Resources
from tests.factories import UserFactory
from tests.support.sshd import BoxFleet, SSHBox

BOX_PASSWORD = "box-pass-Zq7!"
# A port nothing listens on: a Happy server the boxes cannot reach.
CLOSED_HAPPY_URL = "http://127.0.0.1:9"

_fleet: BoxFleet | None = None
_fleet_lock = threading.Lock()


class _AnyHTTP(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _answering_url() -> str:
    """An HTTP server on loopback that answers anything (the admission preflight only asks
    whether the Happy server answers; the boxes never run a daemon in these tests)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnyHTTP)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _shared_fleet() -> BoxFleet:
    global _fleet
    with _fleet_lock:
        if _fleet is None:
            _fleet = BoxFleet(_answering_url())
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
        self.options: list[dict[str, Any]] = []  # check_environment, happy_server_url

    def __call__(
        self, target: Any, *, detect_resources: bool = False, **options: Any
    ) -> ConnectionReport:
        self.calls.append((target, detect_resources))
        self.options.append(options)
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


def npm_installed_happy(fleet: BoxFleet, version: str) -> Path:
    """A ``bin`` directory whose ``happy`` is laid out as ``npm install -g happy-coder``
    leaves it (a symlink into ``lib/node_modules/happy-coder``, whose package.json holds
    ``version``), readable by the box users. Returns the bin directory for a box's PATH."""
    root = Path(tempfile.mkdtemp(prefix="npm-", dir=fleet.directory))
    package = root / "lib" / "node_modules" / "happy-coder"
    (package / "bin").mkdir(parents=True)
    (package / "package.json").write_text(
        json.dumps(
            {"name": "happy-coder", "version": version, "dependencies": {"x": "^1.0.0"}},
            indent=2,
        )
    )
    entry = package / "bin" / "happy.mjs"
    shutil.copy2(fleet.runtime.bin_dir / "happy", entry)
    (root / "bin").mkdir()
    (root / "bin" / "happy").symlink_to("../lib/node_modules/happy-coder/bin/happy.mjs")
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path == entry else 0o644)
    return root / "bin"
