"""User accounts: registration, password checks, admin flags."""

from __future__ import annotations

import logging
from functools import cache

import bcrypt
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import AuthenticationError, ConflictError, NotFoundError
from app.models import User

log = logging.getLogger(__name__)

INVALID_CREDENTIALS = "Invalid username/email or password"

# bcrypt reads at most 72 bytes of a password (bcrypt >= 5 raises beyond that). Registration
# refuses longer passwords (422), so no stored hash belongs to one: at login such a password
# is simply wrong (401), after the same bcrypt work as any other wrong password.
BCRYPT_MAX_BYTES = 72


@cache
def dummy_hash(rounds: int) -> bytes:
    """A hash of a password nobody has, at cost ``rounds``: checked against when there is no
    real hash to check (unknown user, over-long password), so that path costs the same bcrypt
    work as a wrong password and response timing does not reveal which accounts exist.
    Computed once per process and cost, on first use."""
    return bcrypt.hashpw(b"vibebox-timing-equalizer", bcrypt.gensalt(rounds))


def hash_cost(password_hash: str) -> int | None:
    """The cost encoded in a ``$2b$12$...`` hash."""
    parts = password_hash.split("$")
    if len(parts) >= 4 and parts[2].isdigit() and 4 <= int(parts[2]) <= 31:
        return int(parts[2])
    return None


def hash_password(password: str, rounds: int = 12) -> str:
    secret = password.encode("utf-8")
    if len(secret) > BCRYPT_MAX_BYTES:
        raise ValueError(f"password is longer than {BCRYPT_MAX_BYTES} bytes")
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, password_hash: str | None, *, rounds: int = 12) -> bool:
    """Check ``password`` against ``password_hash``; exactly one bcrypt check in every case,
    at the hash's own cost (or ``rounds`` when there is no hash). Never raises for any input
    a client can send."""
    secret = password.encode("utf-8", "surrogatepass")
    cost = (hash_cost(password_hash) if password_hash else None) or rounds
    if not password_hash or len(secret) > BCRYPT_MAX_BYTES or b"\0" in secret:
        bcrypt.checkpw(secret[:BCRYPT_MAX_BYTES].replace(b"\0", b"?"), dummy_hash(cost))
        return False
    try:
        return bcrypt.checkpw(secret, password_hash.encode())
    except ValueError:  # a stored hash bcrypt cannot read
        log.error("unreadable password hash; login refused")
        return False


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


def authenticate(session: Session, *, login: str, password: str, bcrypt_rounds: int = 12) -> User:
    """Find a user by username or email and check the password; one message for all failures.

    An unknown user costs one bcrypt check at ``bcrypt_rounds`` (the cost new hashes get), a
    known one a check at its hash's cost: the same work."""
    login = login.strip()
    user = session.scalars(
        select(User).where(or_(User.username == login.lower(), User.email == login.lower()))
    ).first()
    if user is None:
        verify_password(password, None, rounds=bcrypt_rounds)
        log.info("login failed: unknown user")
        raise AuthenticationError(INVALID_CREDENTIALS, code="invalid_credentials")
    if not verify_password(password, user.password_hash, rounds=bcrypt_rounds):
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
