"""AES-256-GCM for secrets at rest (server credentials, Happy token and secret).

Layout of a sealed value: 1 version byte | 12-byte nonce | ciphertext+tag. The version byte
leaves room for key rotation without guessing formats later.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class DecryptionError(Exception):
    """The value was not sealed with this key, or it was altered."""


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes = b"") -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad or None)


def decrypt(key: bytes, sealed: bytes, *, aad: bytes = b"") -> bytes:
    if len(sealed) < 1 + 12 + 16 or sealed[:1] != _VERSION:
        raise DecryptionError("unknown sealed value format")
    try:
        return AESGCM(key).decrypt(sealed[1:13], sealed[13:], aad or None)
    except InvalidTag as exc:
        raise DecryptionError("sealed value failed authentication") from exc


def encrypt_str(key: bytes, plaintext: str, *, aad: str = "") -> bytes:
    return encrypt(key, plaintext.encode(), aad=aad.encode())


def decrypt_str(key: bytes, sealed: bytes, *, aad: str = "") -> str:
    return decrypt(key, sealed, aad=aad.encode()).decode()
