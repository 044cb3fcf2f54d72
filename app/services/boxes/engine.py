"""The box lifecycle engine: the one place that changes a box's status.

Over 400 lines on purpose: every status change of a box (claiming and finishing steps, the
failure policy, owner and admin requests, teardown, the reconciler's repair) lives here so
that one read shows all the ways a box can move; split out are the status table
(:mod:`app.services.boxes.statuses`) and the step runner (:mod:`app.services.boxes.runner`).

States (``BoxStatus``) and the named transitions between them are a table
(:data:`~app.services.boxes.statuses.TRANSITIONS`); :func:`transition` is the only code that
assigns ``box.status`` and raises :class:`IllegalTransitionError` for anything the table
does not allow. Work on a box is organised in three workflows of steps with rows in
``provisioning_steps``:

- ``provision``: create_happy_account -> allocate_server -> configure_server ->
  start_daemon -> mark_running (statuses pending / waiting_for_capacity / provisioning);
- ``teardown``: stop_daemon -> wipe_credentials -> verify_clean (terminating);
- ``control``: one step, the owner's start / stop / restart (starting / stopping /
  restarting).

One runner (:class:`~app.services.boxes.runner.StepRunner`) runs any step: claim it under
the box's row lock with a lease, ``prepare`` (DB) / ``execute`` (remote only, no transaction
open) / ``record`` (DB), then finish, and ONE policy for what can go wrong: transient ->
retry with exponential backoff and full jitter up to ``PROVISION_MAX_ATTEMPTS`` (counted in
PostgreSQL), capacity -> wait with its own backoff up to ``CAPACITY_RETRY_MAX_SECONDS``, a
server that cannot be used -> quarantine it and move the box, permanent or out of budget ->
fail with a readable reason. The runner is the transaction boundary of a step (it commits
between phases) and enqueues follow-up work only through :mod:`app.services.jobs` (after
commit).

History is append-only: every failed attempt, move, retry, terminate and control action is a
box event; step rows only move forward within a run.
"""

from __future__ import annotations

import enum
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from app import telemetry
from app.errors import InvalidStateError, NotFoundError
from app.models import PaymentEvent, ProvisioningStep, Subscription, VibeBox
from app.services import jobs, pool
from app.services.boxes import events
from app.services.boxes.provisioning import STEPS, TEARDOWN_STEPS
from app.services.boxes.statuses import (
    ACTION_OF,
    ACTION_STATUS,
    ACTION_TO,
    CONTROL_STATUSES,
    PROVISIONING_STATUSES,
    SETTLED,
    BoxStatus,
    S,
    may,
    transition,
)
from app.timeutil import utcnow

log = logging.getLogger(__name__)


# --- workflows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    name: str
    steps: tuple[str, ...]
    statuses: frozenset[BoxStatus]  # the box statuses its steps run in


CONTROL_STEP = "control"
PROVISION = Workflow("provision", STEPS, PROVISIONING_STATUSES)
TEARDOWN = Workflow("teardown", TEARDOWN_STEPS, frozenset({S.TERMINATING}))
CONTROL = Workflow("control", (CONTROL_STEP,), CONTROL_STATUSES)
WORKFLOWS = (PROVISION, TEARDOWN, CONTROL)
_BY_STEP = {step: wf for wf in WORKFLOWS for step in wf.steps}
POSITIONS = {name: i for i, name in enumerate((*STEPS, *TEARDOWN_STEPS, CONTROL_STEP))}
# Steps that need the box's server: a box that left its server runs them again.
SERVER_STEPS = STEPS[STEPS.index("allocate_server") :]


def workflow_of(step: str) -> Workflow:
    return _BY_STEP[step]


def workflow_for_status(status: str) -> Workflow | None:
    for wf in WORKFLOWS:
        if BoxStatus(status) in wf.statuses:
            return wf
    return None


def _locked_box(session: Session, box_id: uuid.UUID) -> VibeBox | None:
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is not None:
        session.refresh(box, attribute_names=["steps"])
    return box


def _step(box: VibeBox, name: str) -> ProvisioningStep:
    for step in box.steps:
        if step.name == name:
            return step
    row = ProvisioningStep(name=name, position=POSITIONS[name], state="pending")
    box.steps.append(row)
    return row


def _steps_of(box: VibeBox, wf: Workflow) -> list[ProvisioningStep]:
    return [_step(box, name) for name in wf.steps]


def first_unfinished(box: VibeBox, wf: Workflow) -> str | None:
    for step in _steps_of(box, wf):
        if step.state not in ("succeeded", "skipped"):
            return step.name
    return None


def _reset(box: VibeBox, names: tuple[str, ...] | list[str]) -> None:
    """Start steps again (a new run: a move, an admin retry, a new action)."""
    for step in box.steps:
        if step.name in names:
            step.state = "pending"
            step.attempts = 0
            step.started_at = None
            step.finished_at = None
            step.last_error = None


def _forget_server(session: Session, box: VibeBox, *, release_to: str | None) -> None:
    """The box leaves its server (released for cleaning, or already quarantined). Its Unix
    user there goes with the server's scrub; the next server gets a user of its own."""
    if box.server_id is not None and release_to is not None:
        pool.release_server(session, box.server_id, to_state=release_to)  # type: ignore[arg-type]
        jobs.enqueue_server(session, "maintenance.clean_server", box.server_id)
    box.server_id = None
    box.unix_user = None
    box.unix_uid = None
    box.login_keys_digest = None


def _settle(box: VibeBox) -> None:
    box.step = None
    box.attempts = 0
    box.next_retry_at = None


# --- claiming and finishing steps -----------------------------------------------------------


# A countdown may fire this much before the ``next_retry_at`` it was scheduled for (clock
# differences between worker machines) and still count as due; below the shortest wait.
EARLY_SLACK_SECONDS = 0.5


class Claim(enum.Enum):
    RUN = "run"  # do the work
    DONE = "done"  # already done: continue with the next step
    STOP = "stop"  # not this task's business (other status, another worker holds it)


def claim(session: Session, box_id: uuid.UUID, name: str, *, lease_seconds: float) -> Claim:
    """Claim step ``name`` under the box's row lock. A running step younger than the lease
    belongs to a live worker (STOP); older, its worker is presumed dead and we take over."""
    box = _locked_box(session, box_id)
    wf = workflow_of(name)
    if box is None or BoxStatus(box.status) not in wf.statuses:
        return Claim.STOP
    step = _step(box, name)
    if step.state == "succeeded":
        return Claim.DONE
    if any(
        s.state not in ("succeeded", "skipped") for s in _steps_of(box, wf)[: wf.steps.index(name)]
    ):
        return Claim.STOP  # out of order: the reconciler resumes the first unfinished step
    now = utcnow()
    if step.state == "running" and step.updated_at > now - timedelta(seconds=lease_seconds):
        return Claim.STOP
    if (
        box.status == S.WAITING_FOR_CAPACITY
        and box.next_retry_at is not None
        and box.next_retry_at > now + timedelta(seconds=EARLY_SLACK_SECONDS)
    ):
        # An earlier countdown of a box that was woken since (the wake and the resend set
        # ``next_retry_at`` to now): its turn is the latest countdown, not this one, so the
        # messages of a waiting box never multiply.
        return Claim.STOP
    step.state = "running"
    step.attempts += 1
    step.started_at = step.started_at or now
    step.updated_at = now
    box.step = name
    box.next_retry_at = None
    box.attempts = step.attempts
    if wf is PROVISION and box.status != S.WAITING_FOR_CAPACITY:
        transition(box, "claim_provision_step")
    return Claim.RUN


def heartbeat(session: Session, box_id: uuid.UUID, name: str) -> None:
    """Extend the lease of a long-running step."""
    box = session.get(VibeBox, box_id)
    if box is not None:
        _step(box, name).updated_at = utcnow()


def finish(
    session: Session, box_id: uuid.UUID, name: str, *, enqueue_next: bool = True
) -> str | None:
    """Mark ``name`` done and move the box on; returns the next step, if any, which is
    enqueued (after commit) unless the caller runs it itself (``enqueue_next=False``)."""
    box = _locked_box(session, box_id)
    wf = workflow_of(name)
    if box is None or BoxStatus(box.status) not in wf.statuses:
        return None
    step = _step(box, name)
    step.state = "succeeded"
    step.finished_at = utcnow()
    step.last_error = None
    box.last_error = None
    box.next_retry_at = None
    box.attempts = 0
    following = wf.steps[wf.steps.index(name) + 1 :]
    if following:
        box.step = following[0]
        if box.status == S.WAITING_FOR_CAPACITY:
            transition(box, "claim_provision_step")
        if enqueue_next:
            jobs.enqueue(session, box.id, following[0])
        return following[0]
    _settle(box)
    if wf is PROVISION:
        transition(box, "provisioned")
        box.capacity_waits = 0
        # The SLO: paid (the box row is created with the paid order) to running.
        telemetry.observe_after_commit(
            session, telemetry.PAID_TO_RUNNING, (utcnow() - box.created_at).total_seconds()
        )
    elif wf is TEARDOWN:
        transition(box, BoxStatus.TERMINATED)
        box.resume_status = None
        box.degraded_since = None
        box.degraded_reason = None
        if box.server_id is not None:
            # Verified clean for this box; one more scrub before the next owner gets it.
            pool.release_server(session, box.server_id, to_state="cleaning")
            jobs.enqueue_server(session, "maintenance.clean_server", box.server_id)
    else:
        action = box.action or ACTION_OF[BoxStatus(box.status)]
        transition(box, "action_done", ACTION_TO[action])
        box.resume_status = None
        box.action = None
    log.info("box %s: %s workflow done (%s)", box.id, wf.name, box.status)
    return None


# --- the failure policy ------------------------------------------------------------------------


def backoff(
    attempt: int, base: float, maximum: float, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter: uniform in [base, min(max, base * 2**(n-1))]."""
    ceiling = min(maximum, base * 2 ** max(attempt - 1, 0))
    return max(base, ceiling * rng()) if ceiling > base else base


def _record_failure(session: Session, box: VibeBox, step: ProvisioningStep, error: str) -> None:
    step.last_error = error
    box.last_error = error
    events.record(session, box, "attempt_failed", f"{step.name} attempt {step.attempts}: {error}")


def schedule_retry(
    session: Session, box_id: uuid.UUID, name: str, *, safe_error: str, delay: float
) -> bool:
    """A failed attempt, to be retried in ``delay`` s (the task re-sends itself with that
    countdown; ``next_retry_at`` lets the reconciler resend a lost one). False when the box
    moved on meanwhile (e.g. an admin terminated it): nothing is scheduled then."""
    box = _locked_box(session, box_id)
    if box is None or BoxStatus(box.status) not in workflow_of(name).statuses:
        return False
    step = _step(box, name)
    step.state = "pending"
    _record_failure(session, box, step, safe_error)
    box.attempts = step.attempts
    box.next_retry_at = utcnow() + timedelta(seconds=delay)
    return True


def wait_for_capacity(
    session: Session, box_id: uuid.UUID, name: str, *, reason: str, base: float, maximum: float
) -> float | None:
    """No server fits yet: wait (its own backoff; it never eats the retry budget). Returns
    the delay, or None when the box moved on meanwhile."""
    box = _locked_box(session, box_id)
    if box is None or not may(box, "wait_for_capacity"):
        return None
    step = _step(box, name)
    step.state = "pending"
    step.attempts = max(step.attempts - 1, 0)  # waiting is not a failed attempt
    box.capacity_waits = (box.capacity_waits or 0) + 1
    delay = backoff(box.capacity_waits, base, maximum)
    if box.status != S.WAITING_FOR_CAPACITY:
        events.record(session, box, "waiting_for_capacity", reason)
    transition(box, "wait_for_capacity")
    step.last_error = reason
    box.last_error = reason
    box.attempts = step.attempts
    box.next_retry_at = utcnow() + timedelta(seconds=delay)
    return delay


def fail(session: Session, box_id: uuid.UUID, name: str, *, safe_error: str) -> bool:
    """Final failure of a step. Provisioning and control: box ``error`` (an admin may retry
    it); a provisioning box leaves its server for cleaning, a box whose control action
    failed keeps it (its files are the owner's). Teardown: the box is terminated anyway
    (the subscription is over) and its server quarantined for a person. False when the
    box moved on meanwhile."""
    box = _locked_box(session, box_id)
    wf = workflow_of(name)
    if box is None or BoxStatus(box.status) not in wf.statuses:
        return False
    step = _step(box, name)
    step.state = "failed"
    step.finished_at = utcnow()
    _record_failure(session, box, step, safe_error)
    box.next_retry_at = None
    if wf is TEARDOWN:
        transition(box, BoxStatus.TERMINATED)
        if box.server_id is not None:
            pool.quarantine_server(
                session, box.server_id, f"teardown of box {box.id} failed at {name}: {safe_error}"
            )
        events.record(session, box, "failed", f"Teardown failed at {name}: {safe_error}")
        log.error("box %s: teardown failed at %s: %s", box_id, name, safe_error)
        return True
    transition(box, "fail")
    if wf is PROVISION and box.server_id is not None:
        # Credentials may be on it: scrubbed and verified before anyone else gets it.
        _forget_server(session, box, release_to="cleaning")
    events.record(session, box, "failed", f"Failed at {name}: {safe_error}")
    log.warning("box %s: failed at %s: %s", box_id, name, safe_error)
    return True


def move_to_another_server(
    session: Session,
    box_id: uuid.UUID,
    name: str,
    *,
    reason: str,
    safe_reason: str,
    max_moves: int,
) -> bool | None:
    """Quarantine the box's server and send it back to allocation (True); fail it once
    ``max_moves`` servers were tried (False); None when the box moved on meanwhile."""
    box = _locked_box(session, box_id)
    if box is None or BoxStatus(box.status) not in PROVISIONING_STATUSES:
        return None
    if box.server_id is not None:
        pool.quarantine_server(session, box.server_id, reason)
    _forget_server(session, box, release_to=None)
    box.moves = (box.moves or 0) + 1
    if box.moves >= max_moves:
        session.flush()
        fail(
            session,
            box_id,
            name,
            safe_error=f"{safe_reason} No healthy server could be used; we are on it.",
        )
        return False
    step = _step(box, name)
    _record_failure(session, box, step, safe_reason)
    _reset(box, SERVER_STEPS)
    box.step = SERVER_STEPS[0]
    box.last_error = f"{safe_reason} Moving your box to another server."
    box.next_retry_at = None
    events.record(session, box, "moved", box.last_error)
    jobs.enqueue(session, box.id, SERVER_STEPS[0])
    log.warning("box %s: moving off its server after %s failed: %s", box_id, name, reason)
    return True


# --- what owners and admins ask for ---------------------------------------------------------


def request_action(
    session: Session, box_id: uuid.UUID, *, owner_id: uuid.UUID, action: str
) -> VibeBox:
    """Owner's start / stop / restart: validated under the box's row lock, enqueued after
    commit. 409 ``action_in_progress`` while another runs, 409 ``invalid_transition``."""
    box = _locked_box(session, box_id)
    if box is None or box.user_id != owner_id:
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    if box.status in CONTROL_STATUSES:
        from app.errors import ConflictError

        raise ConflictError(
            f"Another action is in progress ({box.status})",
            code="action_in_progress",
            extra={"status": box.status},
        )
    resume = box.status
    transition(box, f"request_{action}")
    box.resume_status = resume
    box.action = action
    _reset(box, [CONTROL_STEP])
    _step(box, CONTROL_STEP)
    _reset(box, [CONTROL_STEP])
    box.step = CONTROL_STEP
    box.attempts = 0
    box.last_error = None
    box.next_retry_at = None
    jobs.enqueue(session, box.id, CONTROL_STEP)
    log.info("box %s: %s requested", box.id, action)
    return box


def retry_failed_box(session: Session, box_id: uuid.UUID, *, by: str = "an admin") -> VibeBox:
    """Admin retry: resume the workflow that failed from its failed step. A box that failed
    in a control action goes back to that action (and ends running/stopped); a box that
    failed while provisioning resumes provisioning (from allocation if it left its server).
    The failure stays in the history (events, the step's last error)."""
    box = _locked_box(session, box_id)
    if box is None:
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    if box.status != S.ERROR:
        raise InvalidStateError(
            f"Only a box in error can be retried; this one is {box.status}",
            code="vibebox_not_failed",
            extra={"status": box.status},
        )
    failed = next((s for s in box.steps if s.state == "failed"), None)
    if failed is not None and failed.name == CONTROL_STEP and box.action:
        transition(box, "admin_retry", ACTION_STATUS[box.action])
        _reset(box, [CONTROL_STEP])
        start = CONTROL_STEP
    else:
        names = list(STEPS)
        if box.server_id is None:
            _reset(box, SERVER_STEPS)
        for step in _steps_of(box, PROVISION):
            if step.state in ("failed", "running"):
                _reset(box, [step.name])
        transition(box, "admin_retry", S.PROVISIONING)
        start = first_unfinished(box, PROVISION) or names[-1]
        if start == names[-1] and _step(box, start).state == "succeeded":
            _reset(box, [start])
    box.step = start
    box.attempts = 0
    box.next_retry_at = None
    events.record(session, box, "retried", f"Retried by {by} from {start}.")
    jobs.enqueue(session, box.id, start)
    return box


def start_teardown(session: Session, box_id: uuid.UUID, *, reason: str, cancellable: bool) -> bool:
    """Begin tearing a box down; True when a teardown was started. ``cancellable``
    teardowns (subscription expiry) are cancelled by a renewal that lands before they
    begin; forced ones (admin terminate, refund) never are. A box that never reached a
    server ends here: nothing to undo."""
    box = _locked_box(session, box_id)
    if box is None or not may(box, "terminate"):
        return False
    events.record(session, box, "terminate", f"Teardown started: {reason}.")
    if box.server_id is None:
        for step in box.steps:
            if step.state in ("pending", "running"):
                step.state = "skipped"
        transition(box, "end_without_server")
        _settle(box)
        box.last_error = None
        log.info("box %s terminated before it had a server (%s)", box_id, reason)
        return False
    _reset(box, TEARDOWN_STEPS)
    for name in TEARDOWN_STEPS:
        _step(box, name)
    box.resume_status = box.status
    box.teardown_cancellable = cancellable
    transition(box, "terminate")
    box.step = TEARDOWN_STEPS[0]
    box.next_retry_at = None
    box.attempts = 0
    jobs.enqueue(session, box.id, TEARDOWN_STEPS[0])
    log.info("box %s: teardown started (%s)", box_id, reason)
    return True


def teardown_cancelled_by_renewal(session: Session, box: VibeBox) -> bool:
    """A cancellable teardown whose subscription was renewed before it began."""
    if not box.teardown_cancellable or box.subscription_id is None:
        return False
    sub = session.get(Subscription, box.subscription_id)
    return (
        sub is not None
        and sub.status in ("active", "past_due")
        and sub.current_period_end > utcnow()
    )


# How long a cancellable teardown waits for a payment event of its subscription that the
# webhook recorded but no job has applied yet. Such an event is applied within seconds, or
# re-sent by the reconciler after PAYMENT_EVENT_RESEND_AFTER_SECONDS (60 s); one older than
# this is stuck for another reason (the reconciler reports it) and holds nothing up.
PAYMENT_BEING_APPLIED_SECONDS = 300.0


def payment_being_applied(session: Session, box: VibeBox) -> bool:
    """A cancellable teardown's subscription has a payment event recorded but not yet applied
    (webhooks are recorded at once and applied by a job): the teardown must not race it, or a
    renewal applied a moment later would find its box gone. Deferred events (waiting for a
    checkout) and old ones do not count."""
    if not box.teardown_cancellable or box.subscription_id is None:
        return False
    sub = session.get(Subscription, box.subscription_id)
    if sub is None or not sub.payment_subscription_id:
        return False
    since = utcnow() - timedelta(seconds=PAYMENT_BEING_APPLIED_SECONDS)
    return bool(
        session.scalar(
            select(
                exists().where(
                    PaymentEvent.provider == sub.payment_provider,
                    PaymentEvent.subject == sub.payment_subscription_id,
                    PaymentEvent.processed_at.is_(None),
                    PaymentEvent.note.is_(None),
                    PaymentEvent.received_at > since,
                )
            )
        )
    )


def cancel_teardown(session: Session, box: VibeBox) -> None:
    """Return the box to where it was before its (cancellable) teardown."""
    previous = BoxStatus(box.resume_status or S.RUNNING)
    if previous in CONTROL_STATUSES | {S.ERROR}:
        previous = S.RUNNING if previous != S.ERROR else S.ERROR
    for step in _steps_of(box, TEARDOWN):
        step.state = "skipped"
    transition(box, "cancel_teardown", previous)
    box.resume_status = None
    box.last_error = None
    box.next_retry_at = None
    events.record(
        session, box, "teardown_cancelled", "The subscription was renewed; the box stays."
    )
    if previous in PROVISIONING_STATUSES:
        box.step = first_unfinished(box, PROVISION)
        if box.step is not None:
            jobs.enqueue(session, box.id, box.step)
    else:
        box.step = None
    log.info("box %s: teardown cancelled by a renewal; back to %s", box.id, previous)


# --- the invariant the reconciler keeps --------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    box_id: uuid.UUID
    step: str
    bug: bool  # the invariant was broken (not just a lost message or a dead worker)


def stranded(session: Session, *, older_than: float, limit: int = 200) -> list[Repair]:
    """Boxes that nobody is moving: every box that is not settled must be (a) held by a step
    with a live lease, or (b) scheduled (``next_retry_at`` in the future, with some slack).
    Returns where to resume each one that is neither."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than)
    boxes = session.scalars(
        select(VibeBox)
        .options(selectinload(VibeBox.steps))
        .where(VibeBox.status.not_in([str(s) for s in SETTLED]))
        .order_by(VibeBox.updated_at)
        .limit(limit)
    ).all()
    repairs: list[Repair] = []
    for box in boxes:
        wf = workflow_for_status(box.status)
        if wf is None:
            continue
        name = first_unfinished(box, wf)
        if name is None:
            # Every step done but the status never moved on: a bug, repaired by re-running
            # the last step (idempotent; its finish moves the box on).
            repairs.append(Repair(box.id, wf.steps[-1], bug=True))
            continue
        step = _step(box, name)
        if step.state == "running":
            if step.updated_at < cutoff:
                repairs.append(Repair(box.id, name, bug=False))  # its worker died
            continue
        if box.next_retry_at is not None:
            if box.next_retry_at < cutoff:
                repairs.append(Repair(box.id, name, bug=False))  # the retry message was lost
            continue
        if box.updated_at < cutoff:
            repairs.append(Repair(box.id, name, bug=box.status != S.PENDING))
    return repairs


def resend(session: Session, repair: Repair) -> None:
    """Send a stranded box on again (and remember it, so the next sweep waits)."""
    box = session.get(VibeBox, repair.box_id, with_for_update=True)
    if box is None:
        return
    if repair.bug:
        log.error(
            "box %s broke the lifecycle invariant at %s (status %s); resent",
            box.id,
            repair.step,
            box.status,
        )
        step = _step(box, repair.step)
        if step.state == "succeeded" and repair.step == workflow_of(repair.step).steps[-1]:
            step.state = "pending"
    box.next_retry_at = utcnow()
    jobs.enqueue(session, box.id, repair.step)


def next_retry_in(box: VibeBox, now: datetime | None = None) -> float | None:
    if box.next_retry_at is None:
        return None
    return max((box.next_retry_at - (now or utcnow())).total_seconds(), 0.0)
