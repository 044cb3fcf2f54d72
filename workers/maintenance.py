"""Maintenance tasks (queue ``maintenance``)."""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from app.db import db_session
from app.extensions import get_redis
from app.services import health, provisioning
from workers import celery_app, get_settings

log = logging.getLogger(__name__)


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


@celery_app.task(name="maintenance.reconcile", acks_late=False, ignore_result=True)
def reconcile() -> int:
    """Re-enqueue boxes whose step made no progress within STUCK_STEP_SECONDS.

    Covers a worker killed mid-step, a message lost between commit and publish, and a
    wiped broker: PostgreSQL is the record, the queue is rebuilt from it. Runs alone
    (Redis lock); each box gets its chain again from its first unfinished step, and the
    steps' idempotency makes a duplicate harmless.
    """
    from workers.provisioning import enqueue_provisioning

    settings = get_settings()
    lock = get_redis(settings.redis_url).lock("vibebox:lock:reconcile", timeout=300, blocking=False)
    if not lock.acquire():
        return 0
    try:
        session = db_session()
        due = provisioning.stuck_boxes(
            session, older_than=settings.provisioning.stuck_after_seconds
        )
        for box_id, _ in due:
            provisioning.note_reenqueued(session, box_id)
        session.commit()
        for box_id, step in due:
            log.warning("reconcile: box %s stuck at %s; re-enqueued", box_id, step)
            enqueue_provisioning(box_id, step)
        return len(due)
    finally:
        lock.release()
