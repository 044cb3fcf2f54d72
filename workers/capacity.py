"""Cloud capacity tasks (queue ``maintenance``): thin wrappers of ``app.services.capacity``.

``capacity.bring_up`` (server id): create the node (idempotent by tag), wait for its
address, pin its host key, bootstrap, ``available``; retried with Celery countdowns until
CLOUD_BOOT_TIMEOUT_SECONDS, then the node is destroyed. ``capacity.retire_server``: destroy
a ``retiring`` server's node. ``capacity.sweep`` (beat): warm pool, idle retirement,
orphans, stuck creations.
"""

from __future__ import annotations

import logging
import uuid

from celery import Task

from app.db import db_session
from app.extensions import get_redis
from app.services import capacity
from workers import celery_app, get_settings
from workers.base import StepTask, sweeper

log = logging.getLogger(__name__)
# One runner per server; a killed worker's lock expires after this (then the sweep's resend
# runs). A duplicate creation is still harmless: create looks the tag up first, and the
# orphan reconciliation destroys a node its server row does not name.
LOCK_SECONDS = 120
LOCK_KEY = "vibebox:lock:cloud:{}"


def context() -> capacity.CapacityContext:
    settings = get_settings()
    return capacity.CapacityContext(
        settings=settings, compute_for=capacity.default_compute_for(settings)
    )


def _locked(server_id: str) -> object:
    return get_redis(get_settings().redis_url).lock(
        LOCK_KEY.format(server_id), timeout=LOCK_SECONDS, blocking=False
    )


@celery_app.task(bind=True, base=StepTask, name="capacity.bring_up")
def bring_up(self: Task, server_id: str) -> str:
    """Move one cloud server towards ``available`` (idempotent; one runner per server)."""
    ctx = context()
    lock = _locked(server_id)
    if not lock.acquire():  # type: ignore[attr-defined]
        return "busy"
    try:
        progress = capacity.advance_server(db_session(), uuid.UUID(server_id), ctx)
    finally:
        lock.release()  # type: ignore[attr-defined]
    log.info("cloud server %s: %s %s", server_id, progress.outcome, progress.detail)
    if progress.outcome == "retry":
        raise self.retry(countdown=progress.delay, max_retries=None)
    return progress.outcome


@celery_app.task(bind=True, base=StepTask, name="capacity.retire_server")
def retire_server(self: Task, server_id: str) -> str:
    """Destroy a ``retiring`` server's node, then ``destroyed``."""
    ctx = context()
    progress = capacity.destroy_server(db_session(), uuid.UUID(server_id), ctx)
    if progress.outcome == "retry":
        raise self.retry(countdown=progress.delay, max_retries=None)
    return progress.outcome


@celery_app.task(name="capacity.sweep", acks_late=False, ignore_result=True)
@sweeper("capacity", timeout=300)
def sweep() -> int:
    """Warm pool, idle retirement, orphan reconciliation, stuck creations (beat)."""
    report = capacity.sweep(db_session(), context())
    if report.orphans or report.errors:
        log.warning("capacity sweep: orphans %s, errors %s", report.orphans, report.errors)
    return len(report.created) + len(report.retiring)
