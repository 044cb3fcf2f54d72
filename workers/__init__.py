"""The Celery app: ``celery -A workers worker|beat|flower``.

Tasks are thin: they take ids, call a service inside one session, commit, and end the
session (task_postrun). Progress lives in PostgreSQL, not in the result backend.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_postrun, worker_process_init

from app.config import Settings
from app.db import db_session, dispose_engines, init_db

celery_app = Celery("vibebox")
celery_app.config_from_object("celery_config")

_settings: Settings | None = None


def get_settings() -> Settings:
    """Settings of this worker process (read once from the environment)."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
        init_db(_settings.database_url)
        from app import logging as app_logging

        app_logging.configure(_settings.log_level)
    return _settings


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Pooled connections must not be shared across forked processes.
    dispose_engines()


@task_postrun.connect
def _end_session(**_: Any) -> None:
    db_session.remove()


from workers import billing, boxes, maintenance  # noqa: E402,F401  - register tasks

app = celery_app
__all__ = ["app", "celery_app", "get_settings"]
