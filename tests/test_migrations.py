"""The models and the Alembic migrations describe the same schema."""

from __future__ import annotations

import os

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.models import Base
from app.services.readiness import alembic_config


@pytest.fixture
def scratch_database_url(settings):
    """A throwaway database for tests that walk the migrations up and down."""
    base = make_url(settings.database_url)
    name = f"{base.database}_mig_{os.getpid()}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _config(url: str):
    cfg = alembic_config()
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def test_autogenerate_finds_no_difference_between_models_and_migrations(migrated_engine):
    with migrated_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrations_go_down_to_base_and_back_up(scratch_database_url):
    cfg = _config(scratch_database_url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = create_engine(scratch_database_url)
    with engine.connect() as conn:
        tables = set(
            conn.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))
        )
    assert tables <= {"alembic_version"}
    command.upgrade(cfg, "head")
    # The seed is idempotent: applying the data migration again keeps three plans.
    command.downgrade(cfg, "0001")
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM plans")) == 3
    engine.dispose()


def test_plans_are_seeded_with_prices_and_resources(migrated_engine):
    with migrated_engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                text(
                    "SELECT id, price_monthly, price_yearly, currency, cpu_cores, ram_gb, "
                    "disk_gb, claude_api_quota, features, active FROM plans"
                )
            )
        }
    assert set(rows) == {"basic", "pro", "enterprise"}
    for plan in rows.values():
        assert plan.active
        assert 0 < plan.price_monthly < plan.price_yearly < plan.price_monthly * 12
        assert plan.cpu_cores > 0 and plan.ram_gb > 0 and plan.disk_gb > 0
        assert plan.features
    assert (
        rows["basic"].price_monthly < rows["pro"].price_monthly < rows["enterprise"].price_monthly
    )
