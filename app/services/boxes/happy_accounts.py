"""One Happy account per user, created crash-safely.

The account IS an ed25519 key pair and Happy upserts by public key. So the secret is
generated and committed BEFORE calling ``/v1/auth``: a worker that dies between the call
and the commit retries with the same secret and gets the same account, never a second one.

Regions: the key pair is the user's account on every Happy server (each upserts by public
key), but each server issues its own tokens. ``server_url`` None means the default server
(HAPPY_SERVER_URL; token in ``happy_accounts``); another URL (a region's own server, see
``Settings.happy_realm``) keeps its token in ``happy_server_tokens``.
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
from app.models import HappyAccount, HappyServerToken


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


def _server_aad(user_id: uuid.UUID, server_url: str) -> str:
    return _aad(user_id, f"token@{server_url}")


def _server_token(
    session: Session, user_id: uuid.UUID, server_url: str, *, for_update: bool = False
) -> HappyServerToken | None:
    # Written with Core upserts: always read the row as stored, never a stale identity.
    query = (
        select(HappyServerToken)
        .where(HappyServerToken.user_id == user_id, HappyServerToken.server_url == server_url)
        .execution_options(populate_existing=True)
    )
    return session.scalar(query.with_for_update() if for_update else query)


def _open_server_token(row: HappyServerToken | None, key: bytes) -> str | None:
    if row is None:
        return None
    return crypto.decrypt_str(
        key, row.token_encrypted, aad=_server_aad(row.user_id, row.server_url)
    )


def _put_server_token(
    session: Session, user_id: uuid.UUID, server_url: str, token: str, key: bytes
) -> None:
    sealed = crypto.encrypt_str(key, token, aad=_server_aad(user_id, server_url))
    session.execute(
        insert(HappyServerToken)
        .values(id=uuid.uuid4(), user_id=user_id, server_url=server_url, token_encrypted=sealed)
        .on_conflict_do_update(
            index_elements=["user_id", "server_url"], set_={"token_encrypted": sealed}
        )
    )


def reserve_account(
    session: Session, user_id: uuid.UUID, key: bytes, *, server_url: str | None = None
) -> PendingAccount:
    """Return the user's key pair (with the token of ``server_url``, if stored), creating
    (and flushing) one if the user has none yet.

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
    return _open(account, key, server_url, session)


def store_token(
    session: Session, user_id: uuid.UUID, token: str, key: bytes, *, server_url: str | None = None
) -> None:
    if server_url is not None:
        # First writer wins, as below: lock the account row to serialize writers.
        session.scalars(
            select(HappyAccount).where(HappyAccount.user_id == user_id).with_for_update()
        ).one()
        if _server_token(session, user_id, server_url) is None:
            _put_server_token(session, user_id, server_url, token, key)
        return
    account = session.scalars(
        select(HappyAccount).where(HappyAccount.user_id == user_id).with_for_update()
    ).one()
    if account.token_encrypted is None:  # first writer wins; any issued token stays valid
        account.token_encrypted = crypto.encrypt_str(key, token, aad=_aad(user_id, "token"))


def replace_token(
    session: Session,
    user_id: uuid.UUID,
    token: str,
    key: bytes,
    *,
    rejected: str,
    server_url: str | None = None,
) -> bool:
    """Store ``token`` in place of ``rejected`` (a token the Happy server refused). A no-op
    when the stored token is no longer ``rejected`` (another worker replaced it first)."""
    account = session.scalars(
        select(HappyAccount).where(HappyAccount.user_id == user_id).with_for_update()
    ).one()
    if server_url is not None:
        stored = _open_server_token(_server_token(session, user_id, server_url), key)
        if stored is not None and stored != rejected:
            return False
        _put_server_token(session, user_id, server_url, token, key)
        return True
    current = _open(account, key).token
    if current is not None and current != rejected:
        return False
    account.token_encrypted = crypto.encrypt_str(key, token, aad=_aad(user_id, "token"))
    return True


def get_credentials(
    session: Session, user_id: uuid.UUID, key: bytes, *, server_url: str | None = None
) -> HappyCredentials | None:
    """The user's Happy credentials on ``server_url`` (None: HAPPY_SERVER_URL), or None
    while the account is not created there yet."""
    account = session.scalar(select(HappyAccount).where(HappyAccount.user_id == user_id))
    if account is None:
        return None
    pending = _open(account, key, server_url, session)
    if pending.token is None:
        return None
    return HappyCredentials(secret=pending.secret, token=pending.token)


def _open(
    account: HappyAccount,
    key: bytes,
    server_url: str | None = None,
    session: Session | None = None,
) -> PendingAccount:
    secret = crypto.decrypt(
        key, account.secret_encrypted, aad=_aad(account.user_id, "secret").encode()
    )
    if server_url is not None:
        assert session is not None
        token = _open_server_token(_server_token(session, account.user_id, server_url), key)
        return PendingAccount(user_id=account.user_id, secret=secret, token=token)
    token = (
        crypto.decrypt_str(key, account.token_encrypted, aad=_aad(account.user_id, "token"))
        if account.token_encrypted is not None
        else None
    )
    return PendingAccount(user_id=account.user_id, secret=secret, token=token)
