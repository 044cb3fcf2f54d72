"""A pool server's sealed credentials (bound to its row) and the SSH targets they open."""

from __future__ import annotations

import uuid

from app.crypto import decrypt_str
from app.integrations.ssh import SSHTarget
from app.models import Server


def _credential_aad(server_id: uuid.UUID) -> str:
    return f"server-credential:{server_id}"


def _gateway_credential_aad(server_id: uuid.UUID) -> str:
    return f"server-gateway-credential:{server_id}"


# Cloud servers are sealed the same way (services/capacity/demand.py).
credential_aad = _credential_aad


def ssh_target_for(server: Server, encryption_key: bytes) -> SSHTarget:
    """How to log in to ``server`` (decrypts its credential; the host key stays pinned)."""
    secret = decrypt_str(
        encryption_key, server.credential_encrypted, aad=_credential_aad(server.id)
    )
    is_password = server.auth_method == "password"
    return SSHTarget(
        host=server.host,
        port=server.ssh_port,
        user=server.ssh_user,
        password=secret if is_password else None,
        private_key=None if is_password else secret,
        host_key_fingerprint=server.host_key_fingerprint,
        gateway=gateway_target_for(server, encryption_key),
    )


def gateway_target_for(server: Server, encryption_key: bytes) -> SSHTarget | None:
    """How to log in to ``server``'s gateway (None: the server is reached directly)."""
    if server.gateway_host is None or server.gateway_credential_encrypted is None:
        return None
    secret = decrypt_str(
        encryption_key,
        server.gateway_credential_encrypted,
        aad=_gateway_credential_aad(server.id),
    )
    is_password = server.gateway_auth_method == "password"
    return SSHTarget(
        host=server.gateway_host,
        port=server.gateway_port or 22,
        user=server.gateway_user or "root",
        password=secret if is_password else None,
        private_key=None if is_password else secret,
        host_key_fingerprint=server.gateway_host_key_fingerprint,
    )
