"""The NEW device of Happy's device linking, played as the released Happy app plays it.

Written from the app's sources (slopus/happy ``packages/happy-app/sources``), independently
of ``app.integrations.happy``: ``generateAuthKeyPair`` (an X25519 ``crypto_box`` key pair),
``authQRStart`` (``POST /v1/auth/account/request`` with the STANDARD base64 public key),
the QR code ``happy:///account?`` + base64url(public key) of ``restore/index.tsx``, and
``authQRWait`` (poll the same request until ``authorized``, then ``decryptBox`` the
response: ephemeral public key 32 + nonce 24 + ``crypto_box`` ciphertext).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from nacl.public import Box, PrivateKey, PublicKey


@dataclass
class LinkedAccount:
    token: str = field(repr=False)
    secret: bytes = field(repr=False)


class HappyAppDevice:
    """A Happy app on its "Login with mobile app" / "Link or restore account" screen."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url.rstrip("/")
        self._key = PrivateKey.generate()

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.public_key)

    @property
    def link(self) -> str:
        """What the QR code shows."""
        return "happy:///account?" + base64.urlsafe_b64encode(self.public_key).decode().rstrip("=")

    def request(self) -> dict[str, Any]:
        """One ``POST /v1/auth/account/request`` (start and every poll); the JSON answer."""
        response = requests.post(
            f"{self.server_url}/v1/auth/account/request",
            json={"publicKey": base64.b64encode(self.public_key).decode()},
            timeout=5,
        )
        assert response.status_code == 200, (response.status_code, response.text)
        answer: dict[str, Any] = response.json()
        return answer

    def wait(self, timeout: float = 5.0, interval: float = 0.05) -> LinkedAccount:
        """Poll until approved; decrypt the secret with this device's private key."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.request()
            if answer["state"] == "authorized":
                return LinkedAccount(answer["token"], self.open(answer["response"]))
            assert answer == {"state": "requested"}, answer
            if time.monotonic() > deadline:
                raise AssertionError("the device link was never approved")
            time.sleep(interval)

    def open(self, response_b64: str) -> bytes:
        bundle = base64.b64decode(response_b64, validate=True)
        ephemeral, nonce, ciphertext = bundle[:32], bundle[32:56], bundle[56:]
        return bytes(Box(self._key, PublicKey(ephemeral)).decrypt(ciphertext, nonce))
