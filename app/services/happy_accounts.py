"""One Happy account per user, created crash-safely.

The account IS an ed25519 key pair and Happy upserts by public key. So the secret is
generated and committed BEFORE calling ``/v1/auth``: a worker that dies between the call
and the commit retries with the same secret and gets the same account, never a second one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from nacl.signing import SigningKey
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app import crypto
from app.integrations.happy import HappyCredentials, b64encode, generate_secret
from app.models import HappyAccount


@dataclass(frozen=True)
class PendingAccount:
    """The user's key pair, and the token if one was already stored."""

    user_id: uuid.UUID
    secret: bytes = field(repr=False)
    token: str | None = field(repr=False)


def public_key_b64(secret: bytes) -> str:
    return b64encode(bytes(SigningKey(secret).verify_key))


def _aad(user_id: uuid.UUID, what: str) -> str:
    # Binds each ciphertext to its row and column: a sealed value copied elsewhere fails.
    return f"happy:{user_id}:{what}"


def reserve_account(session: Session, user_id: uuid.UUID, key: bytes) -> PendingAccount:
    """Return the user's key pair, creating (and flushing) one if the user has none yet.

    Concurrent calls for one user settle on a single row (``ON CONFLICT DO NOTHING``).
    """
    account = session.scalar(select(HappyAccount).where(HappyAccount.user_id == user_id))
    if account is None:
        secret = generate_secret()
        session.execute(
            insert(HappyAccount)
            .values(
                id=uuid.uuid4(),
                user_id=user_id,
                public_key=public_key_b64(secret),
                secret_encrypted=crypto.encrypt(key, secret, aad=_aad(user_id, "secret").encode()),
            )
            .on_conflict_do_nothing(index_elements=["user_id"])
        )
        account = session.scalars(select(HappyAccount).where(HappyAccount.user_id == user_id)).one()
    return _open(account, key)


def store_token(session: Session, user_id: uuid.UUID, token: str, key: bytes) -> None:
    account = session.scalars(
        select(HappyAccount).where(HappyAccount.user_id == user_id).with_for_update()
    ).one()
    if account.token_encrypted is None:  # first writer wins; any issued token stays valid
        account.token_encrypted = crypto.encrypt_str(key, token, aad=_aad(user_id, "token"))


def replace_token(
    session: Session, user_id: uuid.UUID, token: str, key: bytes, *, rejected: str
) -> bool:
    """Store ``token`` in place of ``rejected`` (a token the Happy server refused). A no-op
    when the stored token is no longer ``rejected`` (another worker replaced it first)."""
    account = session.scalars(
        select(HappyAccount).where(HappyAccount.user_id == user_id).with_for_update()
    ).one()
    current = _open(account, key).token
    if current is not None and current != rejected:
        return False
    account.token_encrypted = crypto.encrypt_str(key, token, aad=_aad(user_id, "token"))
    return True


def get_credentials(session: Session, user_id: uuid.UUID, key: bytes) -> HappyCredentials | None:
    """The user's Happy credentials, or None while the account is not created yet."""
    account = session.scalar(select(HappyAccount).where(HappyAccount.user_id == user_id))
    if account is None:
        return None
    pending = _open(account, key)
    if pending.token is None:
        return None
    return HappyCredentials(secret=pending.secret, token=pending.token)


def _open(account: HappyAccount, key: bytes) -> PendingAccount:
    secret = crypto.decrypt(
        key, account.secret_encrypted, aad=_aad(account.user_id, "secret").encode()
    )
    token = (
        crypto.decrypt_str(key, account.token_encrypted, aad=_aad(account.user_id, "token"))
        if account.token_encrypted is not None
        else None
    )
    return PendingAccount(user_id=account.user_id, secret=secret, token=token)
