"""VibeBoxes and their step timeline: creation, the step bookkeeping the workflow runner
uses (claim with a lease, finish, retry, fail, move to another server), teardown, admin
retry, the reconciler's view of stuck boxes, and the status document owners poll.

The steps themselves (what each one does) live in ``app.services.steps``.
"""

from __future__ import annotations

import enum
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.config import Settings
from app.errors import InvalidStateError, NotFoundError
from app.integrations.happy import HappyCredentials
from app.models import Plan, ProvisioningStep, Server, Subscription, User, VibeBox
from app.services import events, happy_accounts, pool

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = (
    "create_happy_account",
    "allocate_server",
    "configure_server",
    "start_daemon",
    "mark_running",
)
# Teardown (subscription ended): the same step engine, a second phase of the timeline.
TEARDOWN_STEPS: tuple[str, ...] = ("stop_daemon", "wipe_credentials", "verify_clean")
# Boxes the chain (and the reconciler) still has to move forward.
IN_PROGRESS = ("pending", "waiting_for_capacity", "provisioning")
PHASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # phase: (its steps, the box statuses in which they may run)
    "provision": (STEPS, IN_PROGRESS),
    "teardown": (TEARDOWN_STEPS, ("terminating",)),
}


def phase_of(step_name: str) -> str:
    return "teardown" if step_name in TEARDOWN_STEPS else "provision"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- boxes ---------------------------------------------------------------------------


def create_vibebox(
    session: Session,
    *,
    user_id: uuid.UUID,
    plan_id: str,
    subscription_id: uuid.UUID | None = None,
    order_id: uuid.UUID | None = None,
) -> VibeBox:
    """A pending box with its five pending steps. The caller commits, then enqueues."""
    if session.get(User, user_id) is None:
        raise NotFoundError("No such user", code="user_not_found")
    plan = session.get(Plan, plan_id)
    if plan is None or not plan.active:
        raise NotFoundError("No such plan", code="plan_not_found")
    box = VibeBox(
        user_id=user_id,
        plan_id=plan_id,
        subscription_id=subscription_id,
        order_id=order_id,
        status="pending",
        step=STEPS[0],
        steps=[ProvisioningStep(name=n, position=i, state="pending") for i, n in enumerate(STEPS)],
    )
    session.add(box)
    session.flush()
    return box


def get_box(session: Session, box_id: uuid.UUID, *, owner_id: uuid.UUID | None = None) -> VibeBox:
    """A box with its steps; with ``owner_id``, other users' boxes are 'not found'."""
    box = session.scalar(
        select(VibeBox).options(selectinload(VibeBox.steps)).where(VibeBox.id == box_id)
    )
    if box is None or (owner_id is not None and box.user_id != owner_id):
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    return box


def list_boxes(session: Session, owner_id: uuid.UUID) -> list[VibeBox]:
    return list(
        session.scalars(
            select(VibeBox)
            .options(selectinload(VibeBox.steps))
            .where(VibeBox.user_id == owner_id)
            .order_by(VibeBox.created_at.desc(), VibeBox.id)
        )
    )


def _phase_steps(box: VibeBox, phase: str) -> list[ProvisioningStep]:
    names = PHASES[phase][0]
    return [s for s in box.steps if s.name in names]


def current_phase(box: VibeBox) -> str:
    return "teardown" if box.status in ("terminating", "terminated") else "provision"


def progress(box: VibeBox) -> tuple[int, int]:
    """Steps done of the current phase (provisioning, or teardown once it began)."""
    steps = _phase_steps(box, current_phase(box))
    done = sum(1 for s in steps if s.state in ("succeeded", "skipped"))
    return done, len(steps)


def first_unfinished_step(box: VibeBox, phase: str = "provision") -> str | None:
    for step in _phase_steps(box, phase):
        if step.state != "succeeded":
            return step.name
    return None


def web_url(settings: Settings, creds: HappyCredentials) -> str:
    """The Happy web URL. It carries credentials: owner-only, never logged."""
    from urllib.parse import urlencode

    query = urlencode({"token": creds.token, "secret": creds.secret_b64, "embedded": "true"})
    return f"{settings.happy_web_url}?{query}"


def connection_info(session: Session, settings: Settings, box: VibeBox) -> dict[str, str] | None:
    """``{happyWebUrl}`` for a running box, else None. (No SSH command: the pool login
    is the operator's channel; the customer's shell on the box is a Happy session.)"""
    if box.status != "running" or box.server_id is None:
        return None
    creds = happy_accounts.get_credentials(session, box.user_id, settings.encryption_key)
    server = session.get(Server, box.server_id)
    if creds is None or server is None:
        return None
    return {"happyWebUrl": web_url(settings, creds)}


def connect_url(session: Session, settings: Settings, box: VibeBox) -> str:
    info = connection_info(session, settings, box)
    if info is None:
        raise InvalidStateError(
            f"The VibeBox is {box.status}; it can be opened once it is running",
            code="vibebox_not_running",
            extra={"status": box.status},
        )
    return info["happyWebUrl"]


# --- step bookkeeping ------------------------------------------------------------------


class Begin(enum.Enum):
    RUN = "run"  # do the work
    DONE = "done"  # already done: let the chain continue
    STOP = "stop"  # not this task's business (box finished/failed, or another worker has it)


def _locked_box(session: Session, box_id: uuid.UUID) -> VibeBox | None:
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is not None:
        session.refresh(box, attribute_names=["steps"])
    return box


def _step(box: VibeBox, name: str) -> ProvisioningStep:
    for step in box.steps:
        if step.name == name:
            return step
    raise KeyError(name)


def begin_step(session: Session, box_id: uuid.UUID, name: str, *, lease_seconds: float) -> Begin:
    """Claim ``name`` for this worker under the box's row lock.

    A step marked running whose last update is younger than the lease belongs to another
    live worker: STOP. Older than the lease, its worker is presumed dead and we take over.
    """
    box = _locked_box(session, box_id)
    phase = phase_of(name)
    if box is None or box.status not in PHASES[phase][1]:
        return Begin.STOP
    step = _step(box, name)
    if step.state == "succeeded":
        return Begin.DONE
    earlier = [s for s in _phase_steps(box, phase) if s.position < step.position]
    if any(s.state != "succeeded" for s in earlier):
        return Begin.STOP  # out of order (e.g. reset by a retry): the reconciler resumes it
    now = utcnow()
    if step.state == "running" and step.updated_at > now - timedelta(seconds=lease_seconds):
        return Begin.STOP
    step.state = "running"
    step.attempts += 1
    step.started_at = step.started_at or now
    step.updated_at = now
    box.step = name
    box.next_retry_at = None
    if phase == "provision" and box.status != "waiting_for_capacity":
        box.status = "provisioning"
    box.attempts = step.attempts
    return Begin.RUN


def heartbeat(session: Session, box_id: uuid.UUID, name: str) -> None:
    """Extend the lease of a long-running step."""
    box = session.get(VibeBox, box_id)
    if box is not None:
        _step(box, name).updated_at = utcnow()


def finish_step(session: Session, box_id: uuid.UUID, name: str) -> uuid.UUID | None:
    """Mark ``name`` done; the last step of a phase moves the box on. Returns the id of a
    server that now needs cleaning (end of teardown), for the caller to enqueue."""
    box = _locked_box(session, box_id)
    if box is None:
        return None
    step = _step(box, name)
    now = utcnow()
    step.state = "succeeded"
    step.finished_at = now
    step.last_error = None
    box.last_error = None
    box.next_retry_at = None
    box.attempts = 0
    phase = phase_of(name)
    following = [s for s in _phase_steps(box, phase) if s.position > step.position]
    box.step = following[0].name if following else None
    log.info("box %s: step %s succeeded", box_id, name)
    if name == STEPS[-1]:
        box.status = "running"
    elif name == TEARDOWN_STEPS[-1]:
        box.status = "terminated"
        box.resume_status = None
        box.degraded_since = None
        if box.server_id is not None:
            # Verified clean for this box; one more pass before the next owner gets it.
            pool.release_server(session, box.server_id, to_state="cleaning")
            return box.server_id
    elif box.status == "waiting_for_capacity":
        box.status = "provisioning"
    return None


def schedule_retry(
    session: Session,
    box_id: uuid.UUID,
    name: str,
    *,
    safe_error: str,
    delay: float,
    waiting_for_capacity: bool = False,
) -> None:
    box = _locked_box(session, box_id)
    if box is None:
        return
    step = _step(box, name)
    step.state = "pending"
    step.last_error = safe_error
    if waiting_for_capacity:
        # Waiting is not a failed attempt: it must not eat the retry budget.
        step.attempts = max(step.attempts - 1, 0)
        box.status = "waiting_for_capacity"
    box.last_error = safe_error
    box.attempts = step.attempts
    box.next_retry_at = utcnow() + timedelta(seconds=delay)


def attempts_of(session: Session, box_id: uuid.UUID, name: str) -> int:
    step = session.scalar(
        select(ProvisioningStep).where(
            ProvisioningStep.vibebox_id == box_id, ProvisioningStep.name == name
        )
    )
    return step.attempts if step is not None else 0


def fail_box(
    session: Session, box_id: uuid.UUID, name: str, *, safe_error: str
) -> uuid.UUID | None:
    """Final failure: box ``error`` with a readable reason. Its server is never left
    allocated to a dead box: it goes to ``cleaning`` (the id is returned for the caller to
    enqueue the scrub) or, for a failed teardown, to quarantine."""
    box = _locked_box(session, box_id)
    if box is None:
        return None
    step = _step(box, name)
    step.state = "failed"
    step.finished_at = utcnow()
    step.last_error = safe_error
    box.last_error = safe_error
    box.next_retry_at = None
    if phase_of(name) == "teardown":
        # The subscription is over either way; the server needs a human before reuse.
        box.status = "terminated"
        if box.server_id is not None:
            pool.quarantine_server(
                session, box.server_id, f"teardown of box {box.id} failed at {name}: {safe_error}"
            )
        log.error("box %s: teardown failed at %s: %s", box_id, name, safe_error)
        return None
    box.status = "error"
    server_id = box.server_id
    if server_id is not None:
        # Credentials may be on it: scrubbed and verified before anyone else gets it.
        pool.release_server(session, server_id, to_state="cleaning")
        box.server_id = None
        _forget_box_user(box)
        _reset_from(box, "allocate_server", keep_failed=name)
    log.warning("box %s: failed at %s: %s", box_id, name, safe_error)
    return server_id


def move_to_another_server(
    session: Session,
    box_id: uuid.UUID,
    name: str,
    *,
    reason: str,
    max_moves: int,
    safe_reason: str = "The server did not answer.",
) -> bool:
    """Quarantine the box's server and send the box back to allocation.

    Returns False (and fails the box) once ``max_moves`` servers were tried.
    """
    box = _locked_box(session, box_id)
    if box is None:
        return False
    if box.server_id is not None:
        pool.quarantine_server(session, box.server_id, reason)
        box.server_id = None
    allocation = _step(box, "allocate_server")
    if allocation.attempts >= max_moves:
        session.flush()
        fail_box(
            session,
            box_id,
            name,
            safe_error=f"{safe_reason} No healthy server could be used; we are on it.",
        )
        return False
    _reset_from(box, "allocate_server")
    box.status = "provisioning"
    box.last_error = f"{safe_reason} Moving your box to another server."
    events.record(session, box, "moved", box.last_error)
    _forget_box_user(box)
    log.warning("box %s: moving off its server after %s failed: %s", box_id, name, reason)
    return True


def _forget_box_user(box: VibeBox) -> None:
    """The box left its server: its Unix user there goes with the server's scrub, and the
    next server gets a user of its own."""
    box.unix_user = None
    box.unix_uid = None
    box.login_keys_digest = None


def _reset_from(box: VibeBox, name: str, *, keep_failed: str | None = None) -> None:
    start = _step(box, name).position
    for step in box.steps:
        if step.position >= start and step.name != keep_failed:
            step.state = "pending"
            step.finished_at = None
    box.step = name if keep_failed is None else keep_failed


def retry_failed_box(session: Session, box_id: uuid.UUID) -> tuple[VibeBox, str]:
    """Admin retry: resume an ``error`` box from its failed step (steps already done, such
    as the Happy account, are not redone). Returns the box and the step to start at."""
    box = _locked_box(session, box_id)
    if box is None:
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    if box.status != "error":
        raise InvalidStateError(
            f"Only a box in error can be retried; this one is {box.status}",
            code="vibebox_not_failed",
            extra={"status": box.status},
        )
    for step in box.steps:
        if step.state in ("failed", "running"):
            step.state = "pending"
            step.finished_at = None
        if step.state == "pending":
            step.attempts = 0
            step.last_error = None
    start = first_unfinished_step(box) or STEPS[-1]
    box.status = "provisioning"
    box.step = start
    box.last_error = None
    box.attempts = 0
    box.next_retry_at = None
    return box, start


def stuck_boxes(
    session: Session, *, older_than: float, limit: int = 100
) -> list[tuple[uuid.UUID, str]]:
    """Boxes whose current step made no progress for ``older_than`` seconds (a lost
    message, a killed worker, a wiped broker): ``(box id, step to resume at)``."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    boxes = session.scalars(
        select(VibeBox)
        .options(selectinload(VibeBox.steps))
        .where(VibeBox.status.in_((*IN_PROGRESS, "terminating")), VibeBox.updated_at < cutoff)
        .order_by(VibeBox.updated_at)
        .limit(limit)
    ).all()
    due: list[tuple[uuid.UUID, str]] = []
    for box in boxes:
        step_name = first_unfinished_step(box, current_phase(box))
        if step_name is None:
            continue
        step = _step(box, step_name)
        last_move = max(step.updated_at, box.next_retry_at or step.updated_at)
        if last_move < cutoff:
            due.append((box.id, step_name))
    return due


# --- teardown --------------------------------------------------------------------------


def start_teardown(session: Session, box_id: uuid.UUID, *, reason: str) -> bool:
    """Begin tearing a box down (its subscription ended). True when the caller must enqueue
    the teardown chain; a box that never reached a server ends here, nothing to undo."""
    box = _locked_box(session, box_id)
    if box is None or box.status in ("terminating", "terminated"):
        return False
    if box.server_id is None:
        for step in box.steps:
            if step.state in ("pending", "running"):
                step.state = "skipped"
        box.status = "terminated"
        box.step = None
        box.next_retry_at = None
        box.last_error = None
        log.info("box %s terminated before it had a server (%s)", box_id, reason)
        return False
    existing = {s.name: s for s in box.steps}
    for offset, name in enumerate(TEARDOWN_STEPS):
        found = existing.get(name)
        if found is None:
            box.steps.append(
                ProvisioningStep(name=name, position=len(STEPS) + offset, state="pending")
            )
        else:  # a canceled earlier teardown
            found.state, found.attempts, found.started_at, found.finished_at = (
                "pending",
                0,
                None,
                None,
            )
            found.last_error = None
    box.resume_status = box.status
    box.status = "terminating"
    box.step = TEARDOWN_STEPS[0]
    box.next_retry_at = None
    box.attempts = 0
    log.info("box %s: teardown started (%s)", box_id, reason)
    return True


def subscription_renewed(session: Session, box: VibeBox) -> bool:
    if box.subscription_id is None:
        return False
    sub = session.get(Subscription, box.subscription_id)
    return (
        sub is not None
        and sub.status in ("active", "past_due")
        and sub.current_period_end > utcnow()
    )


def cancel_teardown(session: Session, box: VibeBox) -> str | None:
    """Return the box to where it was; the provisioning step to resume, if any."""
    previous = box.resume_status or "running"
    for step in _phase_steps(box, "teardown"):
        step.state = "skipped"
    box.status = previous
    box.resume_status = None
    box.last_error = None
    box.next_retry_at = None
    log.info("box %s: teardown canceled by a renewal; back to %s", box.id, previous)
    if previous in IN_PROGRESS:
        box.step = first_unfinished_step(box)
        return box.step
    box.step = None
    return None


def note_reenqueued(session: Session, box_id: uuid.UUID) -> None:
    """Remember that the reconciler re-sent this box, so the next sweep waits a full
    period before sending it again (the step's own lease is left alone)."""
    box = session.get(VibeBox, box_id)
    if box is not None:
        box.next_retry_at = utcnow()


def describe_box(session: Session, settings: Settings, box: VibeBox) -> dict[str, Any]:
    """The status document the owner polls (and the admin API returns)."""
    done, total = progress(box)
    return {
        "id": box.id,
        "status": box.status,
        "step": box.step,
        "progress": {"done": done, "total": total},
        "attempts": box.attempts,
        "lastError": box.last_error,
        "nextRetryAt": box.next_retry_at,
        "planId": box.plan_id,
        "createdAt": box.created_at,
        "updatedAt": box.updated_at,
        "timeline": [
            {
                "name": s.name,
                "state": s.state,
                "attempts": s.attempts,
                "startedAt": s.started_at,
                "finishedAt": s.finished_at,
                "lastError": s.last_error,
            }
            for s in box.steps
        ],
        "events": events.recent(session, box.id),
        "degraded": box.degraded_since is not None,
        "degradedSince": box.degraded_since,
        "degradedReason": box.degraded_reason,
        "connectionInfo": connection_info(session, settings, box),
    }
