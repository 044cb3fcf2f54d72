"""Client of the Happy server: account creation and the account's machines.

Built to ``/work/shared/happy-contract.md``. A Happy account IS an ed25519 key pair whose
seed is 32 random secret bytes; the server only ever sees the public key. The same secret
also seals machine metadata / daemon state (NaCl secretbox), so we can read what a box's
daemon reported about itself.

Everything returned is a small dataclass; ``requests``/PyNaCl errors never leave this
module: they become ``TransientError`` (retry) or ``PermanentError`` (fail now). Neither
the token nor the secret ever appears in an exception message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from app.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

SECRET_BYTES = 32
NONCE_BYTES = SecretBox.NONCE_SIZE  # 24
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)  # (connect, read) seconds


def b64encode(data: bytes) -> str:
    """STANDARD, padded base64 — the only alphabet the Happy CLI and server accept."""
    return base64.b64encode(data).decode("ascii")


def generate_secret() -> bytes:
    """Return 32 random bytes: the seed of a new Happy account key pair."""
    return os.urandom(SECRET_BYTES)


def sign_challenge(secret: bytes, challenge: bytes) -> dict[str, str]:
    """Build the ``POST /v1/auth`` body: public key, challenge and detached signature."""
    signing_key = SigningKey(secret)
    signature = signing_key.sign(challenge).signature
    return {
        "publicKey": b64encode(bytes(signing_key.verify_key)),
        "challenge": b64encode(challenge),
        "signature": b64encode(signature),
    }


@dataclass(frozen=True)
class HappyCredentials:
    """What the Happy CLI on a box needs: the account secret and a bearer token."""

    secret: bytes = field(repr=False)
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise ValueError(f"a Happy secret is {SECRET_BYTES} bytes")

    @property
    def secret_b64(self) -> str:
        return b64encode(self.secret)

    def access_key_json(self) -> str:
        """The exact content of ``~/.happy/access.key`` as the CLI reads it."""
        return json.dumps({"secret": self.secret_b64, "token": self.token})


@dataclass(frozen=True)
class HappyMachine:
    """A machine (a daemon) registered to an account; sealed fields already opened."""

    id: str
    active: bool
    metadata: dict[str, Any] | None
    daemon_state: dict[str, Any] | None

    @property
    def daemon_status(self) -> str | None:
        """``"running"``, ``"shutting-down"`` or None when unknown/unreadable."""
        status = (self.daemon_state or {}).get("status")
        return status if isinstance(status, str) else None


def open_sealed(secret: bytes, value: Any) -> dict[str, Any] | None:
    """Open a base64(nonce + secretbox) JSON object; None when absent or unreadable.

    A field sealed with another key or garbled in transit is data we cannot trust, not
    a reason to fail the whole listing.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
        plain = SecretBox(secret).decrypt(raw)  # nonce is the first 24 bytes
        decoded = json.loads(plain)
    except (binascii.Error, ValueError, CryptoError):
        return None
    return decoded if isinstance(decoded, dict) else None


def seal(secret: bytes, value: dict[str, Any]) -> str:
    """Seal a JSON object the way the Happy CLI does (inverse of :func:`open_sealed`)."""
    return b64encode(bytes(SecretBox(secret).encrypt(json.dumps(value).encode())))


class HappyAPI(Protocol):
    """What services need from Happy; tests of services pass a fake."""

    def create_account(self, secret: bytes) -> str: ...

    def list_machines(self, token: str, secret: bytes) -> list[HappyMachine]: ...

    def get_profile(self, token: str) -> str: ...


class HappyClient:
    """HTTP client of one Happy server (``HAPPY_SERVER_URL``)."""

    def __init__(
        self,
        base_url: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def create_account(self, secret: bytes) -> str:
        """Create (or find, by public key) the account of ``secret``; return a new token.

        Idempotent on the account: the server upserts by public key, so a retry after a lost
        answer lands on the same account (with yet another valid token).
        """
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a Happy secret is {SECRET_BYTES} bytes")
        body = sign_challenge(secret, os.urandom(32))
        data = self._request("POST", "/v1/auth", json_body=body)
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientError(
                "Happy /v1/auth answered without a token",
                safe_message="The Happy server gave an unexpected answer.",
            )
        return token

    def list_machines(self, token: str, secret: bytes) -> list[HappyMachine]:
        """List the account's machines, opening ``metadata`` and ``daemonState``."""
        data = self._request("GET", "/v1/machines", token=token)
        if not isinstance(data, list):
            raise TransientError(
                "Happy /v1/machines answered with no list",
                safe_message="The Happy server gave an unexpected answer.",
            )
        return [
            HappyMachine(
                id=str(item.get("id")),
                active=bool(item.get("active")),
                metadata=open_sealed(secret, item.get("metadata")),
                daemon_state=open_sealed(secret, item.get("daemonState")),
            )
            for item in data
            if isinstance(item, dict)
        ]

    def get_profile(self, token: str) -> str:
        """Return the account id of ``token`` (a cheap check that the token is valid)."""
        data = self._request("GET", "/v1/account/profile", token=token)
        account_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(account_id, str):
            raise TransientError(
                "Happy /v1/account/profile answered without an id",
                safe_message="The Happy server gave an unexpected answer.",
            )
        return account_id

    def _request(
        self, method: str, path: str, *, token: str | None = None, json_body: Any = None
    ) -> Any:
        what = f"Happy {method} {path}"
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        started = time.monotonic()
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                json=json_body,
                headers=headers,
                timeout=self.timeout,
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise PermanentError(
                f"{what}: bad server URL ({type(exc).__name__})",
                safe_message="The Happy server is misconfigured.",
            ) from None
        except requests.Timeout:
            raise TransientError(
                f"{what}: timed out after {self.timeout}s",
                safe_message="The Happy server did not answer in time.",
            ) from None
        except requests.RequestException as exc:
            # `from None`: the original exception text could quote request headers.
            raise TransientError(
                f"{what}: {type(exc).__name__}", safe_message="The Happy server is unreachable."
            ) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        log.debug("%s -> %s in %.0f ms", what, response.status_code, elapsed_ms)

        status = response.status_code
        if status >= 400:
            message = f"{what}: HTTP {status} {_error_text(response)}".rstrip()
            # 5xx and 429 may go away; the caller's retry budget bounds them (the real server
            # also answers 500 to malformed base64, which we never send).
            if status >= 500 or status == 429:
                raise TransientError(
                    message, safe_message="The Happy server is temporarily failing."
                )
            raise PermanentError(message, safe_message="The Happy server refused the request.")
        try:
            return response.json()
        except ValueError:
            raise TransientError(
                f"{what}: HTTP {status} with a body that is not JSON",
                safe_message="The Happy server gave an unexpected answer.",
            ) from None


def _error_text(response: requests.Response) -> str:
    """The server's short ``error`` string (e.g. "Invalid token"); never echoes our input."""
    try:
        data = response.json()
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    return str(error)[:200] if isinstance(error, str) else ""
