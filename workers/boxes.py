"""Box step tasks (queues ``provisioning`` and ``control``): one thin task per step, all
running the lifecycle engine's one runner (``app.services.boxes.runner.StepRunner``).

Task names: ``provisioning.<step>``, ``teardown.<step>``, ``control.run_action``. Payload:
the box id only.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from functools import cache

from celery import Task

from app.db import db_session
from app.integrations.happy import HappyClient
from app.integrations.ssh import BoxSession, SessionPool, SSHTarget
from app.services.boxes import engine, runner
from app.services.boxes.provisioning import TEARDOWN_STEPS
from app.services.boxes.steps import StepContext
from workers import celery_app, get_settings
from workers.base import BoxFailedError, StepTask

log = logging.getLogger(__name__)


# The provisioning worker runs a threads pool (README: "Worker pools"): the SSH pool is
# shared by the threads (it locks), each thread has its own HTTP session to Happy
# (requests.Session is not documented as thread-safe) and its own database session
# (``db_session`` is thread-scoped, removed on task_postrun).
_local = threading.local()
_shared_lock = threading.Lock()


@cache
def _shared() -> tuple[SessionPool, Callable[[SSHTarget], BoxSession]]:
    settings = get_settings()
    p = settings.provisioning

    def connect(target: SSHTarget) -> BoxSession:
        return BoxSession(
            target,
            connect_timeout=p.ssh_connect_timeout_seconds,
            command_timeout=p.ssh_command_timeout_seconds,
        )

    return SessionPool(connect, max_idle=p.ssh_pool_max_idle_seconds), connect


def _integrations() -> tuple[HappyClient, SessionPool, Callable[[SSHTarget], BoxSession]]:
    """Per worker process: one pool of SSH connections; per thread: one HTTP session to
    Happy."""
    with _shared_lock:
        sessions, connect = _shared()
    return _happy_client(get_settings().happy_server_url), sessions, connect


def _happy_client(url: str) -> HappyClient:
    clients: dict[str, HappyClient] = getattr(_local, "happy", None) or {}
    _local.happy = clients
    if url not in clients:
        p = get_settings().provisioning
        clients[url] = HappyClient(
            url, timeout=(min(3.05, p.happy_timeout_seconds), p.happy_timeout_seconds)
        )
    return clients[url]


def _regional_happy(url: str) -> HappyClient:
    """One HTTP session per regional Happy server (HAPPY_SERVER_URLS), per thread."""
    return _happy_client(url)


def step_context() -> StepContext:
    happy, sessions, connect = _integrations()
    return StepContext(
        settings=get_settings(),
        happy=happy,
        connect=connect,
        sessions=sessions,
        happy_clients=_regional_happy,
    )


def run_box_step(task: Task, box_id: str, step: str) -> str:
    """Run one step; a retry is a Celery RETRY, a final failure a FAILURE."""
    ctx = step_context()  # first: it initialises this process's settings and database
    outcome = runner.StepRunner(db_session(), ctx).run(uuid.UUID(box_id), step)
    ended_at = outcome.step or step
    log.info("box %s: step %s ended %s", box_id, ended_at, outcome.kind)
    if outcome.kind in ("retry", "waiting"):
        if outcome.delay is not None and outcome.delay > get_settings().celery.max_countdown:
            # Too long to hold as an unacknowledged message (RabbitMQ's consumer_timeout,
            # Redis's visibility_timeout): the box keeps its next_retry_at and the
            # reconciler sends the step on once that has passed.
            log.info("box %s: %s deferred %.0fs to the reconciler", box_id, ended_at, outcome.delay)
            return "deferred"
        if ended_at != step:
            # A step this task ran ahead into: its own task comes back after the delay.
            request_id = getattr(task.request, "request_id", None) or (
                (getattr(task.request, "headers", None) or {}).get("request_id")
            )
            TASKS[ended_at].apply_async(
                args=[box_id],
                countdown=outcome.delay,
                headers={"request_id": request_id} if request_id else None,
            )
            return outcome.kind
        raise task.retry(countdown=outcome.delay, max_retries=None)
    if outcome.kind == "failed":
        raise BoxFailedError(f"box {box_id} failed at {ended_at}: {outcome.detail}")
    return outcome.kind


def _task_name(step: str) -> str:
    if step == engine.CONTROL_STEP:
        return "control.run_action"
    return f"{'teardown' if step in TEARDOWN_STEPS else 'provisioning'}.{step}"


def _step_task(step: str) -> Task:
    @celery_app.task(bind=True, base=StepTask, name=_task_name(step))
    def step_task(self: Task, box_id: str) -> str:
        return run_box_step(self, box_id, step)

    step_task.__doc__ = f"Step `{step}` of one box (idempotent; the engine's runner)."
    return step_task


TASKS: dict[str, Task] = {step: _step_task(step) for step in engine.POSITIONS}
