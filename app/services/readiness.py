"""Readiness checks shared by ``/readyz`` and the worker's probe task."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.orm import Session

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


@dataclass
class Readiness:
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.checks.values())


def alembic_config() -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


@cache
def head_revisions() -> frozenset[str]:
    """Heads of the migration scripts shipped with this code (fixed for the process)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def check_database(session: Session) -> str:
    try:
        session.execute(text("SELECT 1"))
        current = set(MigrationContext.configure(session.connection()).get_current_heads())
    except Exception as exc:  # any driver error means "not ready"
        session.rollback()
        return f"unreachable: {type(exc).__name__}"
    heads = head_revisions()
    if current != heads:
        return f"migrations not at head (database {sorted(current)}, code {sorted(heads)})"
    return "ok"


def check_redis(client) -> str:
    try:
        client.ping()
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def check_worker_roundtrip(timeout: float = 5.0) -> str:
    """Send ``maintenance.probe_worker`` through the broker and wait for a worker's answer (the
    task system is reached through its one seam, like ``app.services.jobs``)."""
    from workers.maintenance import check_worker_roundtrip as round_trip

    return round_trip(timeout=timeout)
