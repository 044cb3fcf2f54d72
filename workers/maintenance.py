"""Maintenance tasks (queue ``maintenance``)."""

from __future__ import annotations

import socket
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from app.db import db_session
from app.services import health
from workers import celery_app, get_settings


@celery_app.task(name="maintenance.probe", acks_late=False, ignore_result=False)
def probe() -> dict[str, Any]:
    """Report what this worker sees: its database (and migrations) and host name.

    Used by ``/readyz?workers=1`` to prove the broker, a worker and the worker's
    database connection all work end to end.
    """
    get_settings()
    return {"worker": socket.gethostname(), "database": health.check_database(db_session())}


def check_worker_roundtrip(timeout: float = 5.0) -> str:
    """Send ``maintenance.probe`` through the broker and wait for a worker's answer."""
    result = None
    try:
        result = probe.apply_async(expires=timeout)
        answer = result.get(timeout=timeout, disable_sync_subtasks=False)
    except CeleryTimeoutError:
        return "no worker answered"
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    finally:
        if result is not None:
            result.forget()
    if answer.get("database") != "ok":
        return f"worker database: {answer.get('database')}"
    return "ok"
