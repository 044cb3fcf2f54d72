"""Maintenance tasks (queue ``maintenance``)."""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any

from celery import Task
from celery.exceptions import TimeoutError as CeleryTimeoutError

from app.db import db_session
from app.errors import PermanentError, TransientError
from app.extensions import get_redis
from app.integrations.box_host import BoxHost
from app.services import billing, jobs, pool, readiness
from app.services.boxes import daemon_watch, engine, lifecycle
from workers import celery_app, get_settings
from workers.base import StepTask, sweeper

log = logging.getLogger(__name__)


def _report_worker() -> dict[str, Any]:
    """Report what this worker sees: its database (and migrations) and host name.

    Used by ``/readyz?workers=1`` to prove the broker, a worker and the worker's
    database connection all work end to end.
    """
    get_settings()
    return {"worker": socket.gethostname(), "database": readiness.check_database(db_session())}


# The readiness round trip through a worker (not ``probe_server``, the SSH probe of one pool
# server). Registered under its old name too: a web process of the previous release sends
# ``maintenance.probe`` during a rolling deploy, and a worker must still answer it.
probe_worker = celery_app.task(
    name="maintenance.probe_worker", acks_late=False, ignore_result=False
)(_report_worker)
celery_app.task(name="maintenance.probe", acks_late=False, ignore_result=False)(_report_worker)


def check_worker_roundtrip(timeout: float = 5.0) -> str:
    """Send ``maintenance.probe_worker`` through the broker and wait for a worker's answer."""
    result = None
    try:
        result = probe_worker.apply_async(expires=timeout)
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
@sweeper("reconcile")
def reconcile() -> int:
    """Keep the lifecycle invariant: every box that is not settled (running, stopped,
    error, terminated) is held by a step with a live lease or scheduled for a retry.
    Boxes that are neither (a killed worker, a lost message, a wiped broker) are sent on
    again from PostgreSQL, the record; a box that broke the invariant is logged as a bug.
    Servers left in ``cleaning`` get another pass, and payment events recorded by a webhook
    but never applied (lost message, crash) are sent to ``billing.apply_payment_event``
    again."""
    settings = get_settings()
    session = db_session()
    repairs = engine.stranded(session, older_than=settings.provisioning.stuck_after_seconds)
    for repair in repairs:
        engine.resend(session, repair)
        log.warning("reconcile: box %s resent at %s", repair.box_id, repair.step)
    for server_id in pool.servers_in_cleaning(session):
        jobs.enqueue_server(session, "maintenance.clean_server", server_id)
    unapplied = billing.unapplied_events(
        session, older_than=settings.payment_event_resend_after_seconds
    )
    for event_id in unapplied:
        jobs.enqueue_payment_event(session, event_id)
        log.warning("reconcile: payment event %s resent (recorded, never applied)", event_id)
    session.commit()  # publishes what was enqueued
    return len(repairs)


class ServerQuarantinedError(Exception):
    """A server would not come clean; it is quarantined for a person (reason on the row)."""


@celery_app.task(bind=True, base=StepTask, name="maintenance.clean_server")
def clean_server(self: Task, server_id: str) -> str:
    """Scrub a server between owners (remove every box user we created on it, verify by
    uid) and return it to the pool.

    Idempotent. The engine's policy: a transient fault (SSH trouble, leftovers) retries with
    the same backoff as box steps, the budget (``PROVISION_MAX_ATTEMPTS``) counted in the
    server row's failure counter; a permanent fault or a spent budget quarantines the server
    (``unhealthy``) and ends the task as FAILURE.
    """
    settings = get_settings()
    # One cleaner per server: a second one (a reconciler resend) that started its scrub
    # after the first returned the server could remove the next box's user.
    lock = get_redis(settings.redis_url).lock(
        f"vibebox:lock:clean:{server_id}", timeout=900, blocking=False
    )
    if not lock.acquire():
        return "already being cleaned"
    try:
        return _clean(self, server_id)
    finally:
        lock.release()


def _clean(task: Task, server_id: str) -> str:
    from app.integrations.ssh import BoxSession

    settings = get_settings()
    session = db_session()
    server_uuid = uuid.UUID(server_id)
    server = pool.get_server(session, server_uuid)
    if server.state != "cleaning":
        return f"skipped ({server.state})"
    target = pool.ssh_target_for(server, settings.encryption_key)
    session.commit()  # no transaction open during the remote work
    p = settings.provisioning
    try:
        with BoxSession(
            target,
            connect_timeout=p.ssh_connect_timeout_seconds,
            command_timeout=p.ssh_command_timeout_seconds,
        ) as box:
            host = BoxHost(box, default_happy_server_url=settings.happy_server_url)
            problem = pool.scrub(host, server_id)
        if problem:
            raise TransientError(problem, safe_message="The server is not clean yet.")
    except PermanentError as exc:
        pool.quarantine_server(session, server_uuid, f"cleaning failed: {exc}")
        session.commit()
        raise ServerQuarantinedError(f"server {server_id}: cleaning failed: {exc}") from None
    except TransientError as exc:
        failures = pool.record_cleaning_failure(session, server_uuid, f"cleaning: {exc}")
        if failures >= p.max_attempts:
            pool.quarantine_server(session, server_uuid, f"cleaning gave up: {exc}")
            session.commit()
            raise ServerQuarantinedError(f"server {server_id}: cleaning gave up: {exc}") from None
        session.commit()
        delay = engine.backoff(failures, p.retry_base_seconds, p.retry_max_seconds)
        raise task.retry(countdown=delay, max_retries=None) from None
    pool.finish_cleaning(session, server_uuid)
    session.commit()
    return "available"


# --- pool health -----------------------------------------------------------------------


@celery_app.task(name="maintenance.health_sweep", acks_late=False, ignore_result=True)
@sweeper("health", timeout=120)
def health_sweep() -> int:
    """Fan out one probe per non-retired server; the maintenance queue's worker
    concurrency bounds how many run at once."""
    ids = lifecycle.servers_to_probe(db_session())
    db_session.commit()
    for server_id in ids:
        probe_server.delay(str(server_id))
    return len(ids)


@celery_app.task(name="maintenance.probe_server", acks_late=False, ignore_result=True, expires=300)
def probe_server(server_id: str) -> str:
    """SSH probe with timeouts (K consecutive failures make a server unhealthy); on a server
    with a running box, also the box's daemon: alive as the box user, else restarted."""
    from app.integrations.ssh import BoxSession
    from workers.boxes import step_context

    settings = get_settings()
    session = db_session()
    server_uuid = uuid.UUID(server_id)
    server = pool.get_server(session, server_uuid)
    target = pool.ssh_target_for(server, settings.encryption_key)
    watch = daemon_watch.plan_watch(session, server_uuid, settings)
    # A quarantined server comes back only when it can host boxes again, not merely
    # because SSH answers (e.g. it still cannot reach its Happy server).
    recovering = server.state == "unhealthy"
    # A server of a region with its own Happy server must reach that one.
    region_happy = settings.regions.configured_happy_url(server.region)
    session.commit()
    timeout = settings.health_probe_timeout_seconds
    ok, latency_ms, error = True, None, None
    watched: daemon_watch.WatchResult | None = None
    try:
        with BoxSession(
            target,
            connect_timeout=timeout,
            command_timeout=max(timeout, settings.provisioning.ssh_command_timeout_seconds),
        ) as box:
            latency_ms = round(box.probe() * 1000)
            host = BoxHost(
                box,
                default_happy_server_url=settings.happy_server_url,
                happy_server_url=region_happy,
            )
            if recovering:
                problem = host.environment_problem()
                if problem is not None:
                    ok, error = False, f"still cannot host boxes: {problem}"
            if watch is not None:
                try:
                    watched = daemon_watch.check_daemon(host, watch, step_context())
                except (TransientError, PermanentError) as exc:
                    log.warning("probe %s: daemon check failed: %s", server_id, exc)
    except (TransientError, PermanentError) as exc:
        ok, error = False, str(exc)
    server = lifecycle.record_server_probe_for_box(
        session,
        server_uuid,
        ok=ok,
        latency_ms=latency_ms,
        error=error,
        unhealthy_after=settings.health_unhealthy_after,
    )
    state = server.state
    if watch is not None and watched is not None:
        daemon_watch.record_watch(session, watch.box_id, watched, settings)
    session.commit()
    if state == "cleaning":
        clean_server.delay(server_id)
    daemon = "" if watched is None else f", daemon {'alive' if watched.alive else 'down'}"
    return f"{'ok' if ok else 'failed'} ({state}{daemon})"


# --- subscription expiry ---------------------------------------------------------------


@celery_app.task(name="maintenance.expire_subscriptions", acks_late=False, ignore_result=True)
@sweeper("expiry", timeout=120)
def expire_subscriptions() -> int:
    """Fan out one expiry per subscription past its period (+ grace)."""
    settings = get_settings()
    ids = lifecycle.due_subscriptions(
        db_session(), grace_seconds=settings.subscription_grace_seconds
    )
    db_session.commit()
    for sub_id in ids:
        expire_subscription.delay(str(sub_id))
    return len(ids)


@celery_app.task(name="maintenance.expire_subscription", ignore_result=True)
def expire_subscription(subscription_id: str) -> int:
    """End one subscription and start its boxes' teardown (idempotent; the teardowns are
    enqueued when this commits)."""
    settings = get_settings()
    session = db_session()
    boxes = lifecycle.expire_subscription(
        session, uuid.UUID(subscription_id), grace_seconds=settings.subscription_grace_seconds
    )
    session.commit()
    return len(boxes)
