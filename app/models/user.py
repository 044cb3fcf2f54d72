from __future__ import annotations

from sqlalchemy import Boolean, CheckConstraint, String, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, Timestamps, UUIDPk, in_values

AUTH_PROVIDERS = ("local", "logto")


class User(UUIDPk, Timestamps, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(in_values("auth_provider", AUTH_PROVIDERS), name="auth_provider"),
    )

    # Both stored lower-cased; uniqueness is enforced by the database so concurrent
    # registrations settle on exactly one winner.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(72))
    auth_provider: Mapped[str] = mapped_column(String(16), default="local", server_default="local")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    def __repr__(self) -> str:
        return f"<User {self.username}>"
