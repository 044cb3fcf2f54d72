"""DEVELOPMENT TOOL: a local Happy server that speaks the real protocol (docs/happy.md).

Not for production: accounts, tokens and machines live in memory only. The test suite uses
it as its Happy double, and ``make run`` starts it in development when ``HAPPY_SERVER_URL``
is not configured (README, "Offline demo").

Real HTTP on 127.0.0.1, so the code under test, a Celery worker process and the `happy`
stand-in on the SSH test boxes all talk to it exactly as they would to happy-server:

- ``POST /v1/auth`` verifies the ed25519 detached signature with PyNaCl, upserts the account
  by public key and issues a NEW ~280-char token each call (all stay valid). Wrong signature
  -> 401 ``Invalid signature``; missing fields / not JSON -> 400; malformed base64, base64url
  or wrong key/signature length -> 500, as the real server does.
- Device linking, as ``authRoutes.ts``: ``POST /v1/auth/account/request {"publicKey"}``
  (no auth) upserts a request for that X25519 key and answers ``{"state": "requested"}``,
  or, once approved, ``{"state": "authorized", "token": <NEW token each call>, "response"}``;
  ``POST /v1/auth/account/response {"publicKey", "response"}`` (Bearer) stores the first
  answer (a later one is ignored) -> ``{"success": true}``, 404 ``Request not found`` for a
  key never requested. Both: key not 32 bytes -> 401 ``Invalid public key``; missing fields
  -> 400 (checked before the Bearer token, as Fastify validates before ``preHandler``);
  malformed base64 -> 500.
- ``GET /v1/machines``, ``POST /v1/machines`` (get-or-create by id, returned unchanged when
  it exists), ``GET /v1/machines/<id>``, ``GET /v1/account/profile``; Bearer errors as the
  real server words them.
- Double only: ``POST /v1/machines/<id>/daemon-state`` ``{"daemonState": sealed}`` stands
  in for the websocket ``machine-update-state`` event the real daemon uses; it bumps
  ``daemonStateVersion`` and marks the machine active.
- Double only: ``POST /__double__/faults`` (same keys as :meth:`HappyDouble.set_faults`) and
  ``GET /__double__/stats``, to drive a double running as a separate process.

In-process: ``with HappyDouble() as double: double.url``. Standalone (benches, e2e):
``python -m app.devtools.happy_server --port 8765``.

Size (over 400 lines): a development and test double of a third-party server, never
imported by the product; it implements each endpoint the product uses.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.secret import SecretBox
from nacl.signing import VerifyKey

from app.devtools.http_double import DoubleRequestHandler, InjectedFaults, ThreadedHTTPDouble

Response = tuple[int, Any]


class _ServerBug(Exception):
    """What makes the real server answer 500 (it does not validate base64 input)."""


def _b64decode_strict(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _ServerBug(f"invalid base64: {exc}") from exc


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_secret() -> bytes:
    """A fresh 32-byte account secret whose STANDARD base64 starts with "+/+/" (base64url:
    "-_-_"), so an encoder that slips into base64url cannot pass a test unnoticed."""
    return bytes.fromhex("fbffbf") + secrets.token_bytes(29)


def seal(secret: bytes, value: dict[str, Any]) -> str:
    """Seal like the Happy CLI: base64(24-byte nonce + secretbox). For building fixtures."""
    return base64.b64encode(bytes(SecretBox(secret).encrypt(json.dumps(value).encode()))).decode()


@dataclass
class _Faults(InjectedFaults):
    fail_status: int = 503
    fail_path: str = "/v1/auth"
    reject_auth: bool = False


@dataclass
class _State:
    accounts: dict[str, str] = field(default_factory=dict)  # public key hex -> account id
    tokens: dict[str, str] = field(default_factory=dict)  # token -> account id
    machines: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # device link requests: public key hex -> {"response": str | None, "account": str | None}
    account_requests: dict[str, dict[str, str | None]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)  # "POST /v1/auth" -> n


class HappyDouble(ThreadedHTTPDouble):
    """The Happy server double; thread-safe fault switches and assertion helpers."""

    _thread_name = "happy-double"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._state = _State()
        self._token_key = secrets.token_bytes(32)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    # --- fault switches ----------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, path: str = "/v1/auth") -> None:
        """Answer the next ``n`` requests whose path starts with ``path`` with ``status``."""
        self.set_faults(fail_next=n, status=status, path=path)

    @property
    def hang(self) -> float:
        return self._faults.hang

    @hang.setter
    def hang(self, seconds: float) -> None:
        """Sleep this long before answering any request (0 = off)."""
        self.set_faults(hang=seconds)

    @property
    def reject_auth(self) -> bool:
        return self._faults.reject_auth

    @reject_auth.setter
    def reject_auth(self, value: bool) -> None:
        """Answer every ``/v1/auth`` with 401 Invalid signature."""
        self.set_faults(reject_auth=value)

    def set_faults(
        self,
        *,
        fail_next: int | None = None,
        status: int | None = None,
        path: str | None = None,
        hang: float | None = None,
        reject_auth: bool | None = None,
    ) -> None:
        with self._lock:
            f = self._faults
            if fail_next is not None:
                f.fail_count = fail_next
            if status is not None:
                f.fail_status = status
            if path is not None:
                f.fail_path = path
            if hang is not None:
                f.hang = hang
            if reject_auth is not None:
                f.reject_auth = reject_auth

    def reset_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    # --- counters and assertion helpers ----------------------------------------------

    @property
    def auth_calls(self) -> int:
        """Every ``POST /v1/auth`` received, including the ones a fault answered."""
        with self._lock:
            return self._state.calls["POST /v1/auth"]

    def calls(self, method_and_path: str) -> int:
        """Requests received for e.g. ``"POST /v1/machines"``."""
        with self._lock:
            return self._state.calls[method_and_path]

    @property
    def accounts(self) -> int:
        with self._lock:
            return len(self._state.accounts)

    @property
    def tokens(self) -> int:
        with self._lock:
            return len(self._state.tokens)

    def revoke_token(self, token: str) -> None:
        """Make ``token`` invalid (401 Invalid token), as a server-side revocation would;
        the account and its other tokens stay."""
        with self._lock:
            self._state.tokens.pop(token, None)

    def account_for_token(self, token: str) -> str | None:
        with self._lock:
            return self._state.tokens.get(token)

    def account_for_public_key(self, public_key: bytes) -> str | None:
        with self._lock:
            return self._state.accounts.get(public_key.hex())

    def account_request(self, device_public_key: bytes) -> dict[str, str | None] | None:
        """The stored device link request of ``device_public_key`` (``response``, ``account``)."""
        with self._lock:
            found = self._state.account_requests.get(device_public_key.hex())
            return dict(found) if found is not None else None

    def machines_for_public_key(self, public_key: bytes) -> list[dict[str, Any]]:
        """Stored machines (sealed fields as sent) of the account of ``public_key``."""
        with self._lock:
            account = self._state.accounts.get(public_key.hex())
            return [dict(m) for (owner, _), m in self._state.machines.items() if owner == account]

    # --- persistence (development server only) -----------------------------------------

    def save_state(self, path: Path) -> None:
        """Write accounts, tokens, machines and link requests to ``path`` (0600, atomically):
        the tokens are credentials of the development accounts."""
        with self._lock:
            state = self._state
            document = {
                "accounts": state.accounts,
                "tokens": state.tokens,
                "machines": [
                    {"account": owner, "machine": m} for (owner, _), m in state.machines.items()
                ],
                "account_requests": state.account_requests,
            }
            data = json.dumps(document)
        temp = path.with_name(path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.replace(temp, path)

    def load_state(self, path: Path) -> None:
        """Read what :meth:`save_state` wrote (nothing when ``path`` does not exist)."""
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return
        with self._lock:
            self._state.accounts = dict(document["accounts"])
            self._state.tokens = dict(document["tokens"])
            self._state.machines = {
                (item["account"], item["machine"]["id"]): item["machine"]
                for item in document["machines"]
            }
            self._state.account_requests = dict(document["account_requests"])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "accounts": len(self._state.accounts),
                "tokens": len(self._state.tokens),
                "machines": len(self._state.machines),
                "account_requests": len(self._state.account_requests),
                "calls": dict(self._state.calls),
            }

    # --- request handling (called from server threads) --------------------------------

    def handle(self, method: str, path: str, authorization: str | None, body: bytes) -> Response:
        route = f"{method} {path}"
        with self._lock:
            self._state.calls[route] += 1
            faults = self._faults
            hang = faults.hang
            injected = faults.take_failure(path)
            reject = faults.reject_auth and route == "POST /v1/auth"
        if hang and not path.startswith("/__double__"):
            self._stopping.wait(hang)
        if injected is not None:
            return injected, {"error": "Injected fault"}
        if reject:
            return 401, {"error": "Invalid signature"}
        try:
            return self._route(method, path, authorization, body)
        except _ServerBug as exc:
            return 500, {"statusCode": 500, "error": "Internal Server Error", "message": str(exc)}

    def _route(self, method: str, path: str, authorization: str | None, body: bytes) -> Response:
        if path == "/__double__/faults" and method == "POST":
            payload = _json_object(body) or {}
            self.set_faults(
                **{
                    k: v
                    for k, v in payload.items()
                    if k in ("fail_next", "status", "path", "hang", "reject_auth")
                }
            )
            return 200, {"ok": True}
        if path == "/__double__/stats" and method == "GET":
            return 200, self.stats()
        if path == "/v1/auth" and method == "POST":
            return self._auth(body)
        if path == "/v1/auth/account/request" and method == "POST":
            return self._account_request(body)
        if path == "/v1/auth/account/response" and method == "POST":
            return self._account_response(authorization, body)

        parts = path.strip("/").split("/")
        known = path in ("/v1/machines", "/v1/account/profile") or (
            parts[:2] == ["v1", "machines"] and len(parts) in (3, 4)
        )
        if not known:
            return 404, {"error": "Not found", "path": path, "method": method}
        account, refusal = self._authenticate(authorization)
        if refusal is not None:
            return refusal

        if path == "/v1/account/profile" and method == "GET":
            return 200, {
                "id": account,
                "timestamp": _now_ms(),
                "firstName": None,
                "lastName": None,
                "avatar": None,
                "github": None,
            }
        if path == "/v1/machines" and method == "GET":
            with self._lock:
                mine = [m for (owner, _), m in self._state.machines.items() if owner == account]
            return 200, sorted((dict(m) for m in mine), key=lambda m: -m["activeAt"])
        if path == "/v1/machines" and method == "POST":
            return self._create_machine(account, body)
        if len(parts) == 3 and method == "GET":
            with self._lock:
                machine = self._state.machines.get((account, parts[2]))
            if machine is None:
                return 404, {"error": "Machine not found"}
            return 200, {"machine": dict(machine)}
        if len(parts) == 4 and parts[3] == "daemon-state" and method == "POST":
            return self._update_daemon_state(account, parts[2], body)
        return 404, {"error": "Not found", "path": path, "method": method}

    def _auth(self, body: bytes) -> Response:
        payload = _json_object(body)
        fields = ("publicKey", "challenge", "signature")
        if payload is None or not all(isinstance(payload.get(k), str) for k in fields):
            return 400, {
                "statusCode": 400,
                "code": "FST_ERR_VALIDATION",
                "error": "Bad Request",
                "message": "body must have required properties publicKey, challenge, signature",
            }
        public_key = _b64decode_strict(payload["publicKey"])
        challenge = _b64decode_strict(payload["challenge"])
        signature = _b64decode_strict(payload["signature"])
        if len(public_key) != 32 or len(signature) != 64:
            raise _ServerBug("bad public key or signature size")
        try:
            VerifyKey(public_key).verify(challenge, signature)
        except BadSignatureError:
            return 401, {"error": "Invalid signature"}
        with self._lock:
            account = self._state.accounts.setdefault(public_key.hex(), _new_account_id())
            token = self._new_token(account)
            self._state.tokens[token] = account
        return 200, {"success": True, "token": token}

    def _authenticate(self, authorization: str | None) -> tuple[str, Response | None]:
        """The account of a Bearer token, or the 401 the real server answers."""
        if not authorization or not authorization.startswith("Bearer "):
            return "", (401, {"error": "Missing authorization header"})
        with self._lock:
            account = self._state.tokens.get(authorization[len("Bearer ") :])
        if account is None:
            return "", (401, {"error": "Invalid token"})
        return account, None

    def _account_request(self, body: bytes) -> Response:
        payload = _json_object(body)
        if payload is None or not isinstance(payload.get("publicKey"), str):
            return 400, _validation_error("body must have required property 'publicKey'")
        public_key = _b64decode_strict(payload["publicKey"])
        if len(public_key) != 32:
            return 401, {"error": "Invalid public key"}
        with self._lock:
            request = self._state.account_requests.setdefault(
                public_key.hex(), {"response": None, "account": None}
            )
            response, account = request["response"], request["account"]
            if not response or account is None:  # the server tests truthiness too
                return 200, {"state": "requested"}
            token = self._new_token(account)
            self._state.tokens[token] = account
        return 200, {"state": "authorized", "token": token, "response": response}

    def _account_response(self, authorization: str | None, body: bytes) -> Response:
        payload = _json_object(body)
        if payload is None or not all(
            isinstance(payload.get(k), str) for k in ("response", "publicKey")
        ):
            return 400, _validation_error("body must have required properties response, publicKey")
        account, refusal = self._authenticate(authorization)
        if refusal is not None:
            return refusal
        public_key = _b64decode_strict(payload["publicKey"])
        if len(public_key) != 32:
            return 401, {"error": "Invalid public key"}
        with self._lock:
            request = self._state.account_requests.get(public_key.hex())
            if request is None:
                return 404, {"error": "Request not found"}
            if not request["response"]:
                request.update(response=payload["response"], account=account)
        return 200, {"success": True}

    def _create_machine(self, account: str, body: bytes) -> Response:
        payload = _json_object(body)
        if (
            payload is None
            or not isinstance(payload.get("id"), str)
            or not isinstance(payload.get("metadata"), str)
            or not isinstance(payload.get("daemonState"), str | None)
        ):
            return 400, {
                "statusCode": 400,
                "error": "Bad Request",
                "message": "body must have id and metadata strings",
            }
        now = _now_ms()
        with self._lock:
            key = (account, payload["id"])
            machine = self._state.machines.get(key)
            if machine is None:
                state = payload.get("daemonState")
                machine = {
                    "id": payload["id"],
                    "metadata": payload["metadata"],
                    "metadataVersion": 1,
                    "daemonState": state,
                    "daemonStateVersion": 1 if state else 0,
                    "seq": 0,
                    "active": False,
                    "activeAt": now,
                    "createdAt": now,
                    "updatedAt": now,
                }
                self._state.machines[key] = machine
            return 200, {"machine": dict(machine)}

    def _update_daemon_state(self, account: str, machine_id: str, body: bytes) -> Response:
        payload = _json_object(body)
        if payload is None or not isinstance(payload.get("daemonState"), str):
            return 400, {
                "statusCode": 400,
                "error": "Bad Request",
                "message": "body must have a daemonState string",
            }
        now = _now_ms()
        with self._lock:
            machine = self._state.machines.get((account, machine_id))
            if machine is None:
                return 404, {"error": "Machine not found"}
            machine.update(
                daemonState=payload["daemonState"],
                active=True,
                activeAt=now,
                updatedAt=now,
                daemonStateVersion=machine["daemonStateVersion"] + 1,
            )
            return 200, {
                "result": "success",
                "version": machine["daemonStateVersion"],
                "daemonState": machine["daemonState"],
            }

    def _new_token(self, account: str) -> str:
        """JWT-shaped, ~280 chars, no expiry, unique per call (like happy-server's)."""
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"user": account, "session": secrets.token_hex(48), "iat": int(time.time())}
        body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{body}".encode()
        signature = _b64url(hmac.new(self._token_key, signing_input, hashlib.sha256).digest())
        return f"{header}.{body}.{signature}"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body or b"null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _validation_error(message: str) -> dict[str, Any]:
    """Fastify's answer to a body its schema rejects."""
    return {
        "statusCode": 400,
        "code": "FST_ERR_VALIDATION",
        "error": "Bad Request",
        "message": message,
    }


def _new_account_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "c" + "".join(secrets.choice(alphabet) for _ in range(24))  # cuid-like


def _now_ms() -> int:
    return int(time.time() * 1000)


def _handler_for(double: HappyDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(DoubleRequestHandler):
        def _serve(self) -> None:
            body = self.read_body()
            path = self.path.split("?", 1)[0]
            status, payload = double.handle(
                self.command, path, self.headers.get("Authorization"), body
            )
            data = json.dumps(payload).encode()
            self.send_body(status, data, "application/json; charset=utf-8")

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the development Happy server (in memory; not for production)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--state-file",
        type=Path,
        help="keep accounts, tokens and machines in this file across restarts (saved on stop)",
    )
    args = parser.parse_args()
    double = HappyDouble(args.host, args.port)
    if args.state_file is not None:
        double.load_state(args.state_file)
    double.start()
    print(f"Happy server (development double) listening on {double.url}", flush=True)
    double.serve_until_signalled()
    if args.state_file is not None:
        double.save_state(args.state_file)


if __name__ == "__main__":
    main()
