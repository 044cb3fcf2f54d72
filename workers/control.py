"""Owner control actions (queue ``control``): start / stop / restart one box.

Thin: plan (DB), act (SSH + Happy confirmation), finish (DB), with the same retry budget
and backoff as the provisioning steps; a final failure leaves a readable error.
"""

from __future__ import annotations

import logging
import uuid

from celery import Task

from app.db import db_session
from app.errors import PermanentError, TransientError
from app.services import control
from workers import celery_app, get_settings
from workers.provisioning import _backoff, step_context, token_saver

log = logging.getLogger(__name__)


@celery_app.task(
    bind=True,
    name="control.run_action",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def run_action(self: Task, box_id: str) -> str:
    """Carry out the box's pending control action (idempotent: SSH start/stop are)."""
    p = get_settings().provisioning
    box_uuid = uuid.UUID(box_id)
    session = db_session()
    ctx = step_context()
    ctx.save_token = token_saver(session, box_uuid)
    try:
        plan = control.plan_action(session, box_uuid, ctx)
        session.commit()
        if plan is None:
            return "nothing to do"
        observed = control.execute_action(plan, ctx)
        status = control.finish_action(session, box_uuid, observed)
        session.commit()
        return status or "nothing to do"
    except TransientError as exc:
        session.rollback()
        attempts = control.attempts_of(session, box_uuid)
        if attempts >= p.max_attempts:
            control.fail_action(session, box_uuid, safe_error=exc.safe_message)
            session.commit()
            return "failed"
        delay = _backoff(attempts, p.retry_base_seconds, p.retry_max_seconds)
        control.retry_action(session, box_uuid, safe_error=exc.safe_message, delay=delay)
        session.commit()
        log.info(
            "box %s: control attempt %s failed (%s); retry in %.1fs", box_id, attempts, exc, delay
        )
        raise self.retry(countdown=delay) from None
    except PermanentError as exc:
        session.rollback()
        control.fail_action(session, box_uuid, safe_error=exc.safe_message)
        session.commit()
        return "failed"


def enqueue_action(box_id: uuid.UUID | str) -> None:
    """Publish the action task. Call only after the transitional status is committed."""
    run_action.delay(str(box_id))
