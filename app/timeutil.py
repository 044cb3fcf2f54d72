"""The one clock of the services: timezone-aware UTC now."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
