"""Client of the Happy server: account creation, the account's machines, device linking.

Built to ``docs/happy.md``. A Happy account IS an ed25519 key pair whose
seed is 32 random secret bytes; the server only ever sees the public key. The same secret
also seals machine metadata / daemon state (NaCl secretbox), so we can read what a box's
daemon reported about itself.

The Happy apps sign in to an existing account in two ways, both implemented here as the
released app does them (slopus/happy, ``packages/happy-app/sources``):

- Device linking: the new device shows ``happy:///account?<its X25519 public key,
  base64url>``; an authorized device approves it with ``POST /v1/auth/account/response``,
  handing over the secret sealed with ``encryptBox`` (:func:`encrypt_box`).
- Restore from the secret key in the app's backup format (:func:`secret_key_backup`).

Everything returned is a small dataclass; ``requests``/PyNaCl errors never leave this
module: they become ``TransientError`` (retry) or ``PermanentError`` (fail now). Neither
the token nor the secret ever appears in an exception message or a log line.

Size (just over 400 lines): the account, machines and device-linking calls share one HTTP
client, one fault mapping and the account's NaCl keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaClRuntimeError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from app.errors import PermanentError, TransientError
from app.integrations.http import is_transient_status, request_faults

log = logging.getLogger(__name__)

SECRET_BYTES = 32
NONCE_BYTES = SecretBox.NONCE_SIZE  # 24
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)  # (connect, read) seconds
BOX_KEY_BYTES = PublicKey.SIZE  # 32: an X25519 (tweetnacl ``box``) public key
BOX_MAC_BYTES = 16  # crypto_box_MACBYTES (Poly1305 tag)
# What the app's QR code carries (restore/index.tsx) and what useConnectAccount accepts:
# this exact prefix, then the whole rest is the key in base64url.
DEVICE_LINK_PREFIX = "happy:///account?"
MAX_DEVICE_LINK_CHARS = 256  # a real link is 60 characters
_BASE64URL_KEY = re.compile(r"[A-Za-z0-9_-]{43}=?")  # 32 bytes: 43 characters, padding optional
# RFC 4648 base32, as secretKeyBackup.ts spells it.
_BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


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


# --- device linking and the secret key backup (the Happy apps' formats) ------------------


def encrypt_box(data: bytes, recipient_public_key: bytes) -> bytes:
    """The app's ``encryptBox``: ephemeral public key (32) + nonce (24) + ``crypto_box``
    ciphertext of ``data`` made with the ephemeral private key for ``recipient_public_key``.
    """
    ephemeral = PrivateKey.generate()
    nonce = os.urandom(Box.NONCE_SIZE)
    try:
        sealed = Box(ephemeral, PublicKey(recipient_public_key)).encrypt(data, nonce)
    except (CryptoError, NaClRuntimeError, ValueError, TypeError):
        raise ValueError("not a usable X25519 public key") from None
    return bytes(ephemeral.public_key) + nonce + sealed.ciphertext


def decrypt_box(bundle: bytes, recipient_private_key: bytes) -> bytes | None:
    """The app's ``decryptBox`` (inverse of :func:`encrypt_box`); None when it does not open."""
    header = BOX_KEY_BYTES + Box.NONCE_SIZE
    if len(bundle) < header + BOX_MAC_BYTES or len(recipient_private_key) != PrivateKey.SIZE:
        return None
    ephemeral = bundle[:BOX_KEY_BYTES]
    nonce = bundle[BOX_KEY_BYTES:header]
    try:
        box = Box(PrivateKey(recipient_private_key), PublicKey(ephemeral))
        return bytes(box.decrypt(bundle[header:], nonce))
    except (CryptoError, NaClRuntimeError, ValueError, TypeError):
        return None


def device_link(public_key: bytes) -> str:
    """The link (and QR code content) a new Happy device shows: inverse of
    :func:`parse_device_link`."""
    if len(public_key) != BOX_KEY_BYTES:
        raise ValueError(f"a device public key is {BOX_KEY_BYTES} bytes")
    return DEVICE_LINK_PREFIX + base64.urlsafe_b64encode(public_key).rstrip(b"=").decode()


def parse_device_link(link: str) -> bytes:
    """The 32-byte X25519 public key of a ``happy:///account?<base64url key>`` link.

    Raises ``ValueError`` with a message fit for the user; the message never quotes the
    link. Surrounding whitespace (from a copy and paste) is ignored.
    """
    if not isinstance(link, str):
        raise ValueError("the device link must be a string")
    if len(link) > MAX_DEVICE_LINK_CHARS:
        raise ValueError(
            f"the device link is too long (at most {MAX_DEVICE_LINK_CHARS} characters)"
        )
    link = link.strip()
    if not link:
        raise ValueError("the device link is empty")
    if link.startswith("happy://terminal?"):
        raise ValueError(
            "this is a terminal link (happy://terminal?...), not a device link "
            f"({DEVICE_LINK_PREFIX}...)"
        )
    if not link.startswith(DEVICE_LINK_PREFIX):
        raise ValueError(f"a device link starts with {DEVICE_LINK_PREFIX}")
    tail = link[len(DEVICE_LINK_PREFIX) :]
    if not tail:
        raise ValueError("the device link carries no key")
    if not _BASE64URL_KEY.fullmatch(tail):
        if re.fullmatch(r"[A-Za-z0-9_-]*=*", tail):
            raise ValueError(
                f"the device link's key has the wrong length (expected {BOX_KEY_BYTES} bytes)"
            )
        raise ValueError("the device link's key is not base64url")
    key = base64.urlsafe_b64decode(tail.rstrip("=") + "=")
    if len(key) != BOX_KEY_BYTES:  # cannot happen after the pattern; kept as a guard
        raise ValueError(
            f"the device link's key has the wrong length (expected {BOX_KEY_BYTES} bytes)"
        )
    try:  # a low-order point (e.g. all zeros) gives no shared key: nothing could be sealed
        crypto_scalarmult(os.urandom(32), key)
    except (NaClRuntimeError, CryptoError, ValueError):
        raise ValueError("the device link's key is not a usable public key") from None
    return key


def secret_key_backup(secret: bytes) -> str:
    """The secret key as the app shows it under Settings -> Account -> Secret Key and reads
    it in "Restore with Secret Key": RFC 4648 base32 of the 32 bytes, no padding (52
    characters), in dash-separated groups of 5 (ten groups of 5, then one of 2)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a Happy secret is {SECRET_BYTES} bytes")
    encoded = base64.b32encode(secret).decode("ascii").rstrip("=")
    return "-".join(encoded[i : i + 5] for i in range(0, len(encoded), 5))


def parse_secret_key_backup(text: str) -> bytes:
    """The 32 secret bytes of a backup-format key, read as the app reads it
    (``parseBackupSecretKey``): upper-cased, 0/1/8/9 taken for O/I/B/G, every other
    character outside A-Z and 2-7 dropped, base32 decoded, exactly 32 bytes."""
    normalized = text.upper().translate(str.maketrans("0189", "OIBG"))
    cleaned = re.sub(r"[^A-Z2-7]", "", normalized)
    if not cleaned:
        raise ValueError("no valid characters found")
    out = bytearray()
    buffer = bits = 0
    for char in cleaned:
        buffer = ((buffer << 5) | _BASE32_ALPHABET.index(char)) & 0xFFFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((buffer >> bits) & 0xFF)
    if len(out) != SECRET_BYTES:
        raise ValueError(f"invalid key length: expected {SECRET_BYTES} bytes, got {len(out)}")
    return bytes(out)


class HappyAPI(Protocol):
    """What services need from Happy; tests of services pass a fake."""

    def create_account(self, secret: bytes) -> str: ...

    def list_machines(self, token: str, secret: bytes) -> list[HappyMachine]: ...

    def get_profile(self, token: str) -> str: ...

    def approve_account_link(self, token: str, secret: bytes, device_public_key: bytes) -> None: ...


class HappyRefusedError(PermanentError):
    """Happy answered a 4xx other than 429 (``status``): retrying the same call will not help."""

    def __init__(self, message: str, *, status: int, safe_message: str | None = None) -> None:
        super().__init__(message, safe_message=safe_message)
        self.status = status


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

    def approve_account_link(self, token: str, secret: bytes, device_public_key: bytes) -> None:
        """Approve a new device's link request, as the app's "Link New Device" does: send
        the account secret sealed for the device (:func:`encrypt_box`).

        Idempotent on Happy's side: a request already answered keeps its first answer.
        An unknown device key (never requested, or a typo) is a ``HappyRefusedError`` 404.
        """
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a Happy secret is {SECRET_BYTES} bytes")
        if len(device_public_key) != BOX_KEY_BYTES:
            raise ValueError(f"a device public key is {BOX_KEY_BYTES} bytes")
        body = {
            "publicKey": b64encode(device_public_key),
            "response": b64encode(encrypt_box(secret, device_public_key)),
        }
        path = "/v1/auth/account/response"
        try:
            data = self._request("POST", path, token=token, json_body=body)
        except HappyRefusedError as exc:
            if exc.status != 404:
                raise
            raise HappyRefusedError(
                str(exc),
                status=exc.status,
                safe_message=(
                    "Happy has no pending sign-in for this device link. Open the link screen "
                    "in the Happy app again and use the new link."
                ),
            ) from None
        if not (isinstance(data, dict) and data.get("success") is True):
            raise TransientError(
                f"Happy POST {path} answered without success",
                safe_message="The Happy server gave an unexpected answer.",
            )

    def _request(
        self, method: str, path: str, *, token: str | None = None, json_body: Any = None
    ) -> Any:
        what = f"Happy {method} {path}"
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        started = time.monotonic()
        with request_faults(
            what, "The Happy server", timeout=self.timeout, url_setting="HAPPY_SERVER_URL"
        ):
            response = self.session.request(
                method,
                self.base_url + path,
                json=json_body,
                headers=headers,
                timeout=self.timeout,
            )
        elapsed_ms = (time.monotonic() - started) * 1000
        log.debug("%s -> %s in %.0f ms", what, response.status_code, elapsed_ms)

        status = response.status_code
        if status >= 400:
            message = f"{what}: HTTP {status} {_error_text(response)}".rstrip()
            # 5xx and 429 may go away; the caller's retry budget bounds them (the real server
            # also answers 500 to malformed base64, which we never send).
            if is_transient_status(status):
                raise TransientError(
                    message, safe_message="The Happy server is temporarily failing."
                )
            raise HappyRefusedError(
                message, status=status, safe_message="The Happy server refused the request."
            )
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
