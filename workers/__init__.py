"""The Celery app: ``celery -A workers worker|beat|flower``.

Tasks are thin: they take ids, call a service inside one session, commit, and end the
session (task_postrun). Progress lives in PostgreSQL, not in the result backend.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

import celery_config
from app.config import BeatSettings, CelerySettings, LogSettings, Settings
from app.db import db_session, dispose_engines, init_db

#: The Celery section of the settings, read once when the workers module is imported (the
#: rest, which needs the database, on first use: ``get_settings``).
CELERY_SETTINGS = CelerySettings.from_env()
celery_app = Celery("vibebox")
celery_config.configure(celery_app, CELERY_SETTINGS, BeatSettings.from_env())

_settings: Settings | None = None
_settings_lock = threading.Lock()  # the provisioning worker's threads start together


def get_settings() -> Settings:
    """Settings of this worker process (read once from the environment)."""
    global _settings
    if _settings is not None:
        return _settings
    with _settings_lock:
        if _settings is None:
            settings = Settings.from_env()
            init_db(settings.database_url)
            from app import logging as app_logging
            from app.services.boxes import box_watch

            box_watch.configure_publisher(settings.redis_url)  # wakes the API's long polls

            app_logging.configure(settings.log.level, settings.log.format)
            _settings = settings  # published last: other threads see it initialised
        return _settings


@worker_init.connect
def _yield_cpu_to_the_web(**_: Any) -> None:
    """Workers run at a lower CPU priority (``WORKER_NICE``, default 10; 0 keeps the
    default): when the cores are busy, the API's answers (a webhook burst, status polls)
    come before background work, which loses nothing and catches up once they are idle.
    On 2 cores, a 300-payment webhook burst while the worker applied the same payments
    answered at about half the rate with both at the same priority (BENCHMARKS.md, P4)."""
    import os

    increment = CELERY_SETTINGS.worker_nice
    if increment > 0:
        with contextlib.suppress(OSError):
            os.nice(increment)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Pooled connections must not be shared across forked processes.
    dispose_engines()


@setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Worker and beat log like the API (LOG_FORMAT, redaction, context fields)."""
    import logging

    from app import logging as app_logging

    log = LogSettings.from_env()
    level = loglevel or log.level
    level = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    app_logging.configure(level, log.format)


_BOX_TASKS = ("provisioning.", "teardown.", "control.")


@task_prerun.connect
def _bind_log_context(
    task_id: str | None = None, task: Any = None, args: Any = None, **_: Any
) -> None:
    """This task's log lines carry its id, its box and the request id it was sent with."""
    from app import logging as app_logging

    request = getattr(task, "request", None)
    request_id = getattr(request, "request_id", None) or (
        (getattr(request, "headers", None) or {}).get("request_id")
    )
    box_id = args[0] if args and str(getattr(task, "name", "")).startswith(_BOX_TASKS) else None
    token = app_logging.bind(
        request_id=app_logging.valid_request_id(request_id) if request_id else None,
        task_id=task_id,
        box_id=box_id,
    )
    if request is not None:
        request._vibebox_log_token = token


@task_postrun.connect
def _end_session(task: Any = None, **_: Any) -> None:
    db_session.remove()
    from app import logging as app_logging

    token = getattr(getattr(task, "request", None), "_vibebox_log_token", None)
    if token is not None:
        with contextlib.suppress(ValueError):
            app_logging.unbind(token)


from workers import billing, boxes, capacity, maintenance  # noqa: E402,F401  - register tasks

app = celery_app
__all__ = ["app", "celery_app", "get_settings"]
