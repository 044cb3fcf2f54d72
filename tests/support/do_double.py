"""A local, protocol-faithful double of the DigitalOcean v2 API whose droplets are REAL
OpenSSH machines on loopback.

API (the subset libcloud's DigitalOcean driver and the capacity service use), all behind
``Authorization: Bearer <token>`` (401 otherwise, as DigitalOcean answers):

- ``GET /v2/account``; ``GET|POST /v2/account/keys``
- ``GET /v2/sizes``, ``/v2/regions``, ``/v2/images``
- ``POST /v2/droplets`` (202; ``name``, ``region``, ``size``, ``image``, ``ssh_keys``, ``tags``,
  ``user_data`` (kept on the droplet, not run);
  422 when the account's droplet limit is reached), ``GET /v2/droplets`` (``tag_name``
  filter, ``page`` / ``per_page`` with ``links.pages.{first,prev,next,last}`` and
  ``meta.total``), ``GET|DELETE /v2/droplets/<id>``
- ``POST /v2/droplets/<id>/actions``, ``GET /v2/actions/<id>``

Faults: ``rate_limit_next(n, reset_in)`` answers 429 with ``ratelimit-limit``,
``ratelimit-remaining`` and ``ratelimit-reset`` (epoch seconds, as DigitalOcean does; no
Retry-After); ``fail_next(n, status, path)`` answers 5xx; ``fail_next_creates(n, status)``
answers only the next ``n`` droplet creations (``POST /v2/droplets``) with ``status`` (429 with
the rate-limit headers above; calls queue up, so 429 then 503 is two calls), before any droplet
exists; ``lose_next_create_answers(n, status)`` creates the droplet but answers ``status``
(the answer lost on the way); ``boot_delay`` is the simulated time from create to SSH
answering; ``never_boot`` leaves new droplets without an address; ``never_answer`` gives them
an address (active) but no sshd (connections are refused).

Machines: each droplet gets its own address from a 127.x.y.N pool and an ``sshd`` bound
there on the provider's SSH port, with its own ed25519 host key, accepting the SSH keys
registered in the account and named in the create request for the login user (one Unix
user shared by all droplets of the double, like ``root`` on every real droplet; a
passwordless sudoer whose sessions have the ``happy`` stand-in on PATH and
HAPPY_SERVER_URL, from :class:`tests.support.sshd.BoxFleet`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from app.devtools.box_runtime import generate_ed25519_key, sshd_binary
from tests.support.http_double import DoubleRequestHandler, InjectedFaults, ThreadedHTTPDouble
from tests.support.sshd import (
    SUDOERS_DIR,
    USER_PREFIX,
    BoxFleet,
    _account_command,
    _add_user,
    _remove_user,
)

SIZES = [
    {"slug": "s-1vcpu-2gb", "memory": 2048, "vcpus": 1, "disk": 50, "price_monthly": 12.0},
    {"slug": "s-2vcpu-4gb", "memory": 4096, "vcpus": 2, "disk": 80, "price_monthly": 24.0},
    {"slug": "s-4vcpu-8gb", "memory": 8192, "vcpus": 4, "disk": 160, "price_monthly": 48.0},
]
REGIONS = ["nyc1", "ams3", "sgp1"]
IMAGES = [{"id": 1001, "slug": "ubuntu-24-04-x64", "name": "24.04 (LTS) x64"}]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size_doc(size: dict[str, Any]) -> dict[str, Any]:
    return {
        **size,
        "transfer": 4.0,
        "price_hourly": round(size["price_monthly"] / 730, 5),
        "regions": REGIONS,
        "available": True,
        "description": "Basic",
    }


def _image_doc(image: dict[str, Any]) -> dict[str, Any]:
    return {
        **image,
        "distribution": "Ubuntu",
        "public": True,
        "regions": REGIONS,
        "min_disk_size": 7,
        "created_at": "2024-04-25T00:00:00Z",
        "type": "base",
    }


@dataclass
class _Faults(InjectedFaults):
    rate_limited: int = 0
    reset_in: float = 2.0
    create_failures: list[int] = field(default_factory=list)  # statuses, in order
    lost_create_answers: list[int] = field(default_factory=list)  # created, then this status


@dataclass
class Droplet:
    id: int
    name: str
    region: str
    size: str
    image: str
    tags: list[str]
    key_ids: list[int]
    created_at: str
    status: str = "new"
    user_data: str | None = None  # cloud-init, kept as sent (the double's machines ignore it)
    address: str | None = None
    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    deleted: bool = False
    boot_thread: threading.Thread | None = field(default=None, repr=False)

    def doc(self) -> dict[str, Any]:
        size = next(s for s in SIZES if s["slug"] == self.size)
        image = next((i for i in IMAGES if i["slug"] == self.image), IMAGES[0])
        v4 = []
        if self.address and self.status == "active":
            v4 = [
                {
                    "ip_address": self.address,
                    "netmask": "255.0.0.0",
                    "gateway": "127.0.0.1",
                    "type": "public",
                }
            ]
        return {
            "id": self.id,
            "name": self.name,
            "memory": size["memory"],
            "vcpus": size["vcpus"],
            "disk": size["disk"],
            "locked": False,
            "status": self.status,
            "kernel": None,
            "created_at": self.created_at,
            "features": [],
            "backup_ids": [],
            "snapshot_ids": [],
            "image": _image_doc(image),
            "size": _size_doc(size),
            "size_slug": self.size,
            "networks": {"v4": v4, "v6": []},
            "region": {"slug": self.region, "name": self.region, "available": True},
            "tags": list(self.tags),
            "vpc_uuid": None,
        }

    @property
    def host_key_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "ssh_host_ed25519_key"

    @property
    def host_key_fingerprint(self) -> str:
        blob = base64.b64decode(Path(f"{self.host_key_path}.pub").read_text().split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class DigitalOceanDouble(ThreadedHTTPDouble):
    """See the module docstring. ``ssh_port`` is where every droplet's sshd listens (the
    provider's configured SSH port); ``login_user`` is created by the double."""

    _thread_name = "do-double"

    def __init__(
        self,
        fleet: BoxFleet,
        *,
        token: str = "do-test-token",  # noqa: S107 - a test credential
        ssh_port: int = 0,
        boot_delay: float = 0.5,
        droplet_limit: int = 25,
        per_page_max: int = 200,
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self.token = token
        self.boot_delay = boot_delay
        self.never_boot = False
        self.never_answer = False
        self.droplet_limit = droplet_limit
        self.per_page_max = per_page_max
        self.ssh_port = ssh_port or _free_port()
        self.lock = threading.Lock()
        self.droplets: dict[int, Droplet] = {}
        self.keys: dict[int, dict[str, Any]] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self._ids = iter(range(300_000_000, 400_000_000))
        # 127.<a>.<b>.N: a per-process block, so parallel test processes do not collide.
        block = os.getpid() % 60000
        self._net = f"127.{10 + block // 250}.{block % 250}"
        self._next_host = 10
        self._faults = _Faults()
        self.directory = fleet.directory / f"do-{secrets.token_hex(3)}"
        self.directory.mkdir(mode=0o711)
        self.login_user = USER_PREFIX + secrets.token_hex(4)
        self._create_login_user()

    # --- switches ------------------------------------------------------------------------

    def rate_limit_next(self, n: int, reset_in: float = 2.0) -> None:
        with self.lock:
            self._faults.rate_limited, self._faults.reset_in = n, reset_in

    def fail_next(self, n: int, status: int = 500, path: str = "/v2/") -> None:
        with self.lock:
            self._faults.fail_next(n, status, path)

    def fail_next_creates(self, n: int, status: int, reset_in: float = 2.0) -> None:
        """Answer the next ``n`` droplet creations (after those already armed) with
        ``status``; no droplet is made. 429 carries ``ratelimit-reset`` ``reset_in`` s ahead."""
        with self.lock:
            self._faults.create_failures.extend([status] * n)
            self._faults.reset_in = reset_in

    def lose_next_create_answers(self, n: int, status: int = 502) -> None:
        """The next ``n`` droplet creations succeed (the droplet exists and boots) but are
        answered with ``status``, as when a proxy loses the provider's answer."""
        with self.lock:
            self._faults.lost_create_answers.extend([status] * n)

    def create_attempts(self) -> int:
        """How many ``POST /v2/droplets`` requests arrived (answered or faulted)."""
        with self.lock:
            requests = list(self.requests)
        return sum(1 for m, p in requests if m == "POST" and p.split("?")[0] == "/v2/droplets")

    def reset_faults(self) -> None:
        with self.lock:
            self._faults = _Faults()
        self.never_boot = False
        self.never_answer = False

    def live_droplets(self) -> list[Droplet]:
        with self.lock:
            return [d for d in self.droplets.values() if not d.deleted]

    def add_foreign_droplet(self, name: str, tags: list[str], size: str = "s-1vcpu-2gb") -> Droplet:
        """A droplet created behind our back (no machine), e.g. an orphan."""
        with self.lock:
            droplet = Droplet(
                next(self._ids),
                name,
                REGIONS[0],
                size,
                IMAGES[0]["slug"],
                tags,
                [],
                _now(),
                status="active",
            )
            self.droplets[droplet.id] = droplet
        return droplet

    # --- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        super().stop()
        for droplet in list(self.droplets.values()):
            self._destroy_machine(droplet)
        _remove_user(self.login_user)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _create_login_user(self) -> None:
        _add_user(self.login_user)
        _account_command(["usermod", "-p", "*", self.login_user])
        sudoers = SUDOERS_DIR / self.login_user
        SUDOERS_DIR.mkdir(mode=0o755, exist_ok=True)
        sudoers.write_text(f"{self.login_user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        Path(pwd.getpwnam(self.login_user).pw_dir).chmod(0o700)

    def _boot(self, droplet: Droplet) -> None:
        if self._stopping.wait(self.boot_delay) or self.never_boot:
            return
        with self.lock:
            if droplet.deleted:
                return
            self._next_host += 1
            if self._next_host > 250:
                self._next_host = 11
            droplet.address = f"{self._net}.{self._next_host}"
            if self.never_answer:  # an address, but its sshd never comes up
                droplet.status = "active"
                return
        try:
            self._start_machine(droplet)
        except Exception as exc:  # the droplet stays "new"; tests see it never boots
            print(f"do-double: droplet {droplet.id} failed to boot: {exc}")
            return
        with self.lock:
            if not droplet.deleted:
                droplet.status = "active"

    def _start_machine(self, droplet: Droplet) -> None:
        assert droplet.address is not None
        directory = self.directory / str(droplet.id)
        directory.mkdir(mode=0o755)
        droplet.directory = directory
        generate_ed25519_key(droplet.host_key_path, droplet.name)
        with self.lock:
            keys = [self.keys[k]["public_key"] for k in droplet.key_ids if k in self.keys]
        authorized = directory / "authorized_keys"
        authorized.write_text("".join(k + "\n" for k in keys))
        authorized.chmod(0o644)
        env = " ".join(f"{k}={v}" for k, v in self.fleet.runtime.env(self.fleet.happy_url).items())
        config = directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.ssh_port}",
                    f"ListenAddress {droplet.address}",
                    f"HostKey {droplet.host_key_path}",
                    "PidFile none",
                    f"AllowUsers {self.login_user}",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",  # the key file lives under /tmp (1777)
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "UseDNS no",
                    "PrintMotd no",
                    "MaxStartups 200",
                    "MaxSessions 100",
                    "Subsystem sftp internal-sftp",
                    f"SetEnv {env}",
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(directory / "sshd.log", "ab")  # noqa: SIM115 - lives with the process
        droplet.process = subprocess.Popen(
            [sshd_binary(), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if droplet.process.poll() is not None:
                raise RuntimeError((directory / "sshd.log").read_text()[-1000:])
            try:
                with socket.create_connection((droplet.address, self.ssh_port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sshd did not answer")

    def _destroy_machine(self, droplet: Droplet) -> None:
        process, droplet.process = droplet.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _page(
    double: DigitalOceanDouble, path: str, query: dict[str, list[str]], key: str, items: list[Any]
) -> dict[str, Any]:
    per_page = min(int((query.get("per_page") or ["20"])[0]), double.per_page_max)
    page = max(int((query.get("page") or ["1"])[0]), 1)
    last = max((len(items) + per_page - 1) // per_page, 1)
    chunk = items[(page - 1) * per_page : page * per_page]
    base = {k: v[0] for k, v in query.items() if k not in ("page",)}

    def url(n: int) -> str:
        return f"{double.url}{path}?{urlencode({**base, 'page': n})}"

    pages: dict[str, str] = {}
    if page > 1:
        pages.update(first=url(1), prev=url(page - 1))
    if page < last:
        pages.update(next=url(page + 1), last=url(last))
    return {key: chunk, "links": {"pages": pages} if pages else {}, "meta": {"total": len(items)}}


def _handler_for(double: DigitalOceanDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(DoubleRequestHandler):
        def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
            body = b"" if doc is None else json.dumps(doc).encode()
            self.send_body(status, body, "application/json" if body else None, headers)

        def _error(
            self, status: int, ident: str, message: str, headers: dict[str, str] | None = None
        ) -> None:
            self._json(status, {"id": ident, "message": message}, headers)

        def _gate(self, path: str) -> bool:
            double.requests.append((self.command, self.path))
            if self.headers.get("Authorization") != f"Bearer {double.token}":
                self._error(401, "Unauthorized", "Unable to authenticate you.")
                return False
            with double.lock:
                faults = double._faults
                creating = self.command == "POST" and path == "/v2/droplets"
                if faults.rate_limited > 0:
                    faults.rate_limited -= 1
                    status: int | None = 429
                elif creating and faults.create_failures:
                    status = faults.create_failures.pop(0)
                else:
                    status = faults.take_failure(path)
                reset = int(time.time() + faults.reset_in)
            if status == 429:
                headers = {
                    "ratelimit-limit": "5000",
                    "ratelimit-remaining": "0",
                    "ratelimit-reset": str(reset),
                }
                self._error(429, "too_many_requests", "API Rate limit exceeded.", headers)
                return False
            if status is not None:
                self._error(status, "server_error", "Unexpected server-side error")
                return False
            return True

        def do_GET(self) -> None:
            parsed = urlparse(self.path)
            path, query = parsed.path.rstrip("/"), parse_qs(parsed.query)
            if not self._gate(path):
                return
            if path == "/v2/account":
                self._json(
                    200,
                    {
                        "account": {
                            "droplet_limit": double.droplet_limit,
                            "email": "ops@example.com",
                            "uuid": "acc-1",
                            "status": "active",
                            "email_verified": True,
                        }
                    },
                )
            elif path == "/v2/account/keys":
                with double.lock:
                    keys = list(double.keys.values())
                self._json(200, _page(double, path, query, "ssh_keys", keys))
            elif path == "/v2/sizes":
                self._json(200, _page(double, path, query, "sizes", [_size_doc(s) for s in SIZES]))
            elif path == "/v2/regions":
                regions = [
                    {
                        "slug": r,
                        "name": r,
                        "available": True,
                        "sizes": [s["slug"] for s in SIZES],
                        "features": [],
                    }
                    for r in REGIONS
                ]
                self._json(200, _page(double, path, query, "regions", regions))
            elif path == "/v2/images":
                self._json(
                    200, _page(double, path, query, "images", [_image_doc(i) for i in IMAGES])
                )
            elif path == "/v2/droplets":
                tag = (query.get("tag_name") or [None])[0]
                with double.lock:
                    found = [
                        d.doc()
                        for d in sorted(double.droplets.values(), key=lambda d: d.id)
                        if not d.deleted and (tag is None or tag in d.tags)
                    ]
                self._json(200, _page(double, path, query, "droplets", found))
            elif path.startswith("/v2/droplets/"):
                droplet = self._droplet(path.split("/")[3])
                if droplet is not None:
                    self._json(200, {"droplet": droplet.doc()})
            elif path.startswith("/v2/actions/"):
                with double.lock:
                    action = double.actions.get(
                        int(path.split("/")[3]) if path.split("/")[3].isdigit() else -1
                    )
                if action is None:
                    self._error(
                        404, "not_found", "The resource you were accessing could not be found."
                    )
                else:
                    self._json(200, {"action": action})
            else:
                self._error(404, "not_found", "The resource you were accessing could not be found.")

        def _droplet(self, ident: str) -> Droplet | None:
            with double.lock:
                droplet = double.droplets.get(int(ident)) if ident.isdigit() else None
            if droplet is None or droplet.deleted:
                self._error(404, "not_found", "The resource you were accessing could not be found.")
                return None
            return droplet

        def do_POST(self) -> None:
            parsed = urlparse(self.path)
            path = parsed.path.rstrip("/")
            raw = self.read_body()
            if not self._gate(path):
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._error(400, "bad_request", "Invalid JSON")
                return
            if path == "/v2/account/keys":
                public = str(body.get("public_key") or "")
                if not body.get("name") or not public.startswith("ssh-"):
                    self._error(
                        422,
                        "unprocessable_entity",
                        "Key invalid, key should be of the form 'type key [comment]'",
                    )
                    return
                blob = base64.b64decode(public.split()[1])
                fingerprint = ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())  # noqa: S324 - DO's format
                with double.lock:
                    key_id = len(double.keys) + 41_000_001
                    double.keys[key_id] = {
                        "id": key_id,
                        "name": body["name"],
                        "public_key": public,
                        "fingerprint": fingerprint,
                    }
                    doc = double.keys[key_id]
                self._json(201, {"ssh_key": doc})
            elif path == "/v2/droplets":
                self._create(body)
            elif path.startswith("/v2/droplets/") and path.endswith("/actions"):
                droplet = self._droplet(path.split("/")[3])
                if droplet is None:
                    return
                with double.lock:
                    action_id = len(double.actions) + 7_000_001
                    action = {
                        "id": action_id,
                        "status": "completed",
                        "type": body.get("type"),
                        "started_at": _now(),
                        "completed_at": _now(),
                        "resource_id": droplet.id,
                        "resource_type": "droplet",
                        "region_slug": droplet.region,
                    }
                    double.actions[action_id] = action
                self._json(201, {"action": action})
            else:
                self._error(404, "not_found", "The resource you were accessing could not be found.")

        def _create(self, body: dict[str, Any]) -> None:
            size, region, image = body.get("size"), body.get("region"), body.get("image")
            errors = []
            if not body.get("name"):
                errors.append("Name is required")
            if size not in {s["slug"] for s in SIZES}:
                errors.append("Size is invalid")
            if region not in REGIONS:
                errors.append("Region is not available")
            if image not in {i["slug"] for i in IMAGES} and str(image) not in {
                str(i["id"]) for i in IMAGES
            }:
                errors.append("Image is invalid")
            if errors:
                self._error(422, "unprocessable_entity", "; ".join(errors))
                return
            keys = []
            with double.lock:
                for ref in body.get("ssh_keys") or []:
                    match = [
                        k
                        for k in double.keys.values()
                        if ref in (k["id"], k["fingerprint"], str(k["id"]))
                    ]
                    if not match:
                        self._error(422, "unprocessable_entity", "ssh_keys contains an invalid key")
                        return
                    keys.append(match[0]["id"])
                live = sum(1 for d in double.droplets.values() if not d.deleted)
                if live >= double.droplet_limit:
                    self._error(
                        422,
                        "unprocessable_entity",
                        "creating this/these droplet(s) will exceed your droplet limit",
                    )
                    return
                droplet = Droplet(
                    next(double._ids),
                    str(body["name"]),
                    str(region),
                    str(size),
                    str(image),
                    [str(t) for t in body.get("tags") or []],
                    keys,
                    _now(),
                    user_data=str(body["user_data"]) if body.get("user_data") else None,
                )
                double.droplets[droplet.id] = droplet
            thread = threading.Thread(
                target=double._boot, args=(droplet,), daemon=True, name=f"boot-{droplet.id}"
            )
            droplet.boot_thread = thread
            thread.start()
            with double.lock:
                lost = double._faults.lost_create_answers
                status = lost.pop(0) if lost else None
            if status is not None:
                self._error(status, "server_error", "Unexpected server-side error")
                return
            self._json(
                202,
                {
                    "droplet": droplet.doc(),
                    "links": {
                        "actions": [
                            {"id": 1, "rel": "create", "href": f"{double.url}/v2/actions/1"}
                        ]
                    },
                },
            )

        def do_DELETE(self) -> None:
            path = urlparse(self.path).path.rstrip("/")
            if not self._gate(path):
                return
            if path.startswith("/v2/droplets/"):
                droplet = self._droplet(path.split("/")[3])
                if droplet is None:
                    return
                with double.lock:
                    droplet.deleted = True
                    droplet.status = "archive"
                double._destroy_machine(droplet)
                self._json(204, None)
            else:
                self._error(404, "not_found", "The resource you were accessing could not be found.")

    return Handler
