"""User accounts: registration, password checks, admin flags."""

from __future__ import annotations

import logging

import bcrypt
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import AuthenticationError, ConflictError, NotFoundError
from app.models import User

log = logging.getLogger(__name__)

INVALID_CREDENTIALS = "Invalid username/email or password"

# Compared against when the user does not exist, so an unknown user costs the same bcrypt
# work as a wrong password and response timing does not reveal which accounts exist.
_DUMMY_HASH = bcrypt.hashpw(b"vibebox-timing-equalizer", bcrypt.gensalt(4))


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, password_hash: str | None) -> bool:
    if not password_hash:
        bcrypt.checkpw(password.encode(), _DUMMY_HASH)
        return False
    return bcrypt.checkpw(password.encode(), password_hash.encode())


def register_user(
    session: Session,
    *,
    email: str,
    username: str,
    password: str,
    is_admin: bool = False,
    bcrypt_rounds: int = 12,
) -> User:
    """Create a local user. Duplicate email/username -> ConflictError (settled by the DB)."""
    user = User(
        email=email.strip().lower(),
        username=username.strip().lower(),
        password_hash=hash_password(password, bcrypt_rounds),
        auth_provider="local",
        is_admin=is_admin,
    )
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "") or ""
        if "email" in constraint:
            raise ConflictError("This email is already registered", code="email_taken") from None
        if "username" in constraint:
            raise ConflictError("This username is taken", code="username_taken") from None
        raise
    log.info("user registered: %s", user.id)
    return user


def authenticate(session: Session, *, login: str, password: str) -> User:
    """Find a user by username or email and check the password; one message for all failures."""
    login = login.strip()
    user = session.scalars(
        select(User).where(or_(User.username == login.lower(), User.email == login.lower()))
    ).first()
    if user is None:
        verify_password(password, None)
        log.info("login failed: unknown user")
        raise AuthenticationError(INVALID_CREDENTIALS, code="invalid_credentials")
    if not verify_password(password, user.password_hash):
        log.info("login failed: wrong password for user %s", user.id)
        raise AuthenticationError(INVALID_CREDENTIALS, code="invalid_credentials")
    log.info("login ok: user %s", user.id)
    return user


def set_admin(session: Session, *, login: str, is_admin: bool = True) -> User:
    user = session.scalars(
        select(User).where(or_(User.username == login.lower(), User.email == login.lower()))
    ).first()
    if user is None:
        raise NotFoundError(f"No user {login!r}", code="user_not_found")
    user.is_admin = is_admin
    return user


def list_users(session: Session, *, limit: int, offset: int) -> tuple[list[User], int]:
    total = session.scalar(select(func.count()).select_from(User)) or 0
    users = session.scalars(
        select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    ).all()
    return list(users), total
