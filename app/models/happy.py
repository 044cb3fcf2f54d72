from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk


class HappyAccount(UUIDPk, Timestamps, Base):
    """A user's Happy account: an ed25519 key pair; the server knows only the public key.

    The 32-byte secret (the key seed) and the token are AES-256-GCM encrypted at rest.
    """

    __tablename__ = "happy_accounts"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), unique=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)  # standard base64
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    token_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)


class HappyServerToken(UUIDPk, Timestamps, Base):
    """The user's token on a Happy server other than HAPPY_SERVER_URL (a region's own
    server). The same key pair is the account on every server (Happy upserts by public
    key); each server issues its own tokens. Encrypted like ``HappyAccount.token``."""

    __tablename__ = "happy_server_tokens"
    __table_args__ = (UniqueConstraint("user_id", "server_url"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    server_url: Mapped[str] = mapped_column(Text)
    token_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
