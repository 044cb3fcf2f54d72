"""Cloud providers an operator configures (CLI ``vibebox cloud``, admin API).

Credentials are sealed with AES-256-GCM (``ENCRYPTION_KEY``) bound to the provider's row and
field (AAD), like server credentials, and never returned. Each provider gets an ed25519 SSH
key pair of its own, generated here (private key sealed); it is registered with the provider
when the first server is created and is how we log in to the servers we create.

HTTP mapping: ``validation_error`` -> 422, ``cloud_provider_exists`` /
``cloud_provider_in_use`` -> 409, ``cloud_provider_not_found`` -> 404.

No Flask and no commits here: the caller owns the transaction.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.crypto import decrypt_str, encrypt_str
from app.errors import ConflictError, NotFoundError, ValidationError
from app.integrations.cloud import EXPECTED_BOOT_SECONDS, CloudAccount
from app.models import CloudProvider, Server
from app.models.cloud import CLOUD_DRIVERS

log = logging.getLogger(__name__)

# What an operator may change after creation (credentials included; the key pair is ours).
UPDATABLE = frozenset(
    {
        "region",
        "box_region",
        "image",
        "plan_sizes",
        "size_rules",
        "size_prices",
        "warm_size",
        "ssh_port",
        "login_user",
        "api_base_url",
        "warm_target",
        "max_servers",
        "monthly_budget_cents",
        "idle_retire_seconds",
        "boot_seconds",
        "enabled",
        "credentials",
    }
)
# Servers of a provider that exist (or may exist) at the provider.
LIVE_SERVER_STATES = (
    "creating",
    "bootstrapping",
    "available",
    "allocated",
    "cleaning",
    "unhealthy",
    "draining",
    "retiring",
)


@dataclass(frozen=True)
class ProviderView:
    """A provider with its server count (what the API and CLI show)."""

    provider: CloudProvider
    servers: int


def _aad(provider_id: uuid.UUID, what: str) -> str:
    return f"cloud-provider:{provider_id}:{what}"


def generate_key_pair(comment: str) -> tuple[str, str]:
    """(private key in OpenSSH PEM, public key line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} {comment}"


def _validate(values: dict[str, Any]) -> None:
    errors: dict[str, list[str]] = {}
    if "driver" in values and values["driver"] not in CLOUD_DRIVERS:
        errors["driver"] = [f"Must be one of: {', '.join(CLOUD_DRIVERS)}."]
    creds = values.get("credentials")
    if creds is not None and (not isinstance(creds, dict) or not creds.get("key")):
        errors["credentials"] = ["Give at least the API key (token)."]
    for rule in values.get("size_rules") or []:
        if not isinstance(rule, dict) or not rule.get("size"):
            errors["size_rules"] = ['Each rule is {"size", "cpu", "ramGb", "diskGb"}.']
    if errors:
        raise ValidationError("The cloud provider description is not valid", errors=errors)


def add_provider(
    session: Session, *, encryption_key: bytes, credentials: dict[str, str], **values: Any
) -> CloudProvider:
    """Store a provider (no API call: the key pair is registered on first use)."""
    _validate({**values, "credentials": credentials})
    provider_id = uuid.uuid4()
    private, public = generate_key_pair(f"vibebox-{values['name']}")
    provider = CloudProvider(
        id=provider_id,
        credentials_encrypted=encrypt_str(
            encryption_key, json.dumps(credentials), aad=_aad(provider_id, "credentials")
        ),
        ssh_private_key_encrypted=encrypt_str(
            encryption_key, private, aad=_aad(provider_id, "ssh-key")
        ),
        ssh_public_key=public,
        boot_seconds=values.pop("boot_seconds", None)
        or EXPECTED_BOOT_SECONDS.get(values.get("driver", ""), 90),
        plan_sizes=values.pop("plan_sizes", None) or {},
        size_rules=values.pop("size_rules", None) or [],
        size_prices=values.pop("size_prices", None) or {},
        **{k: v for k, v in values.items() if v is not None},
    )
    try:
        with session.begin_nested():
            session.add(provider)
            session.flush()
    except IntegrityError:
        raise ConflictError(
            f"A cloud provider named {values['name']!r} exists", code="cloud_provider_exists"
        ) from None
    log.info("cloud: provider %s (%s, %s) added", provider.name, provider.driver, provider.region)
    return provider


def get_provider(
    session: Session, ref: uuid.UUID | str, *, for_update: bool = False
) -> CloudProvider:
    """By id or by name; 404 ``cloud_provider_not_found``."""
    try:
        condition = CloudProvider.id == uuid.UUID(str(ref))
    except ValueError:
        condition = CloudProvider.name == str(ref)
    stmt = select(CloudProvider).where(condition)
    if for_update:
        stmt = stmt.with_for_update()
    provider = session.scalars(stmt).first()
    if provider is None:
        raise NotFoundError(f"No cloud provider {ref}", code="cloud_provider_not_found")
    return provider


def server_counts(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not ids:
        return {}
    rows = session.execute(
        select(Server.cloud_provider_id, func.count())
        .where(Server.cloud_provider_id.in_(ids), Server.state.in_(LIVE_SERVER_STATES))
        .group_by(Server.cloud_provider_id)
    )
    return {pid: n for pid, n in rows if pid is not None}


def view(session: Session, providers: list[CloudProvider]) -> list[ProviderView]:
    counts = server_counts(session, [p.id for p in providers])
    return [ProviderView(p, counts.get(p.id, 0)) for p in providers]


def page_providers(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[list[ProviderView], int]:
    total = session.scalar(select(func.count()).select_from(CloudProvider)) or 0
    rows = session.scalars(
        select(CloudProvider).order_by(CloudProvider.name).limit(limit).offset(offset)
    )
    return view(session, list(rows)), total


def update_provider(
    session: Session, ref: uuid.UUID | str, *, encryption_key: bytes, **changes: Any
) -> CloudProvider:
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValidationError(
            "These fields cannot be changed", errors={n: ["Unknown field."] for n in unknown}
        )
    _validate(changes)
    provider = get_provider(session, ref, for_update=True)
    credentials = changes.pop("credentials", None)
    if credentials is not None:
        provider.credentials_encrypted = encrypt_str(
            encryption_key, json.dumps(credentials), aad=_aad(provider.id, "credentials")
        )
    for name, value in changes.items():
        setattr(provider, name, value)
    session.flush()
    log.info("cloud: provider %s updated (%s)", provider.name, ", ".join(sorted(changes)))
    return provider


def remove_provider(session: Session, ref: uuid.UUID | str) -> None:
    """Delete a provider none of whose servers still exists (409 ``cloud_provider_in_use``;
    disable it and let its servers retire first)."""
    provider = get_provider(session, ref, for_update=True)
    live = server_counts(session, [provider.id]).get(provider.id, 0)
    if live:
        raise ConflictError(
            f"Cloud provider {provider.name} still has {live} server(s); disable it "
            "(`vibebox cloud update --disable`) and let them retire first",
            code="cloud_provider_in_use",
        )
    session.delete(provider)
    session.flush()
    log.info("cloud: provider %s removed", provider.name)


def credentials_of(provider: CloudProvider, encryption_key: bytes) -> dict[str, str]:
    raw = decrypt_str(
        encryption_key, provider.credentials_encrypted, aad=_aad(provider.id, "credentials")
    )
    creds: dict[str, str] = json.loads(raw)
    return creds


def private_key_of(provider: CloudProvider, encryption_key: bytes) -> str:
    return decrypt_str(
        encryption_key, provider.ssh_private_key_encrypted, aad=_aad(provider.id, "ssh-key")
    )


def account_of(provider: CloudProvider, encryption_key: bytes, *, timeout: float) -> CloudAccount:
    creds = credentials_of(provider, encryption_key)
    if provider.driver == "linode":
        creds = {**creds, "publicKey": provider.ssh_public_key}
    return CloudAccount(
        driver=provider.driver,
        credentials=creds,
        region=provider.region,
        api_base_url=provider.api_base_url,
        timeout=timeout,
    )
