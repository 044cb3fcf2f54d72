"""The step runner: runs one step of one box with the engine's failure policy."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from app import telemetry
from app.errors import PermanentError, TransientError
from app.models import VibeBox
from app.services.boxes import happy_accounts
from app.services.boxes.engine import (
    _BY_STEP,
    CONTROL_STEP,
    Claim,
    backoff,
    claim,
    fail,
    finish,
    heartbeat,
    move_to_another_server,
    schedule_retry,
    wait_for_capacity,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a step run came to, for the task that ran it."""

    kind: str  # "succeeded" | "done" | "stopped" | "retry" | "waiting" | "moved" | "failed"
    detail: str = ""
    delay: float | None = None
    next_step: str | None = None
    step: str | None = None  # the step it came to (a task may run several: RUN_AHEAD)


class StepRunner:
    """Runs one step of one box with the engine's policy. ``implementations`` maps step
    names to :class:`app.services.boxes.steps.Step` objects; ``ctx`` gives them the integrations;
    ``settings`` the budgets. Commits between phases: no transaction is open while a step
    talks to a remote system."""

    def __init__(self, session: Session, ctx: Any, steps: dict[str, Any] | None = None) -> None:
        self.session = session
        self.ctx = ctx
        self.implementations = steps if steps is not None else implementations()
        self.p = ctx.settings.provisioning

    def run(self, box_id: uuid.UUID, name: str) -> Outcome:
        """Run ``name``; a successful step whose follower talks to the same server runs
        that follower too, in this process on the warm SSH connection (each step is still
        claimed, committed and retried on its own)."""
        while True:
            started = time.perf_counter()
            outcome = replace(self._run_one(box_id, name), step=name)
            telemetry.observe_step(name, outcome.kind, time.perf_counter() - started)
            if outcome.kind == "done" and name in RUN_AHEAD:
                # A redelivered message (its worker died after this step) or a retry sent
                # as an earlier step's task: nobody enqueued the follower, so go on to it
                # (its claim settles any race under the box's row lock).
                name = RUN_AHEAD[name]
                continue
            if outcome.kind != "succeeded" or outcome.next_step is None:
                return outcome
            if RUN_AHEAD.get(name) != outcome.next_step:
                return outcome
            name = outcome.next_step

    def _run_one(self, box_id: uuid.UUID, name: str) -> Outcome:
        from app.services.boxes.steps import (
            NoCapacityError,
            ServerUnusableError,
            TeardownCanceledError,
        )

        session, p = self.session, self.p
        claimed = claim(session, box_id, name, lease_seconds=p.stuck_after_seconds)
        session.commit()
        if claimed is Claim.STOP:
            return Outcome("stopped")
        if claimed is Claim.DONE:
            return Outcome("done")  # whoever did it enqueued what follows
        step = self.implementations[name]

        def beat() -> None:
            heartbeat(session, box_id, name)
            session.commit()

        def save_token(token: str, rejected: str) -> None:
            box = session.get(VibeBox, box_id)
            if box is not None:
                key = self.ctx.settings.encryption_key
                happy_accounts.replace_token(
                    session,
                    box.user_id,
                    token,
                    key,
                    rejected=rejected,
                    server_url=self.ctx.settings.happy_realm(box.region),
                )
                session.commit()

        self.ctx.heartbeat = beat
        self.ctx.save_token = save_token
        try:
            box = session.get(VibeBox, box_id)
            assert box is not None
            plan = step.prepare(session, box, self.ctx)
            session.commit()  # e.g. the Happy key pair, before Happy ever sees it
            result = step.execute(plan, self.ctx) if plan is not None else None
            box = session.get(VibeBox, box_id, populate_existing=True)
            assert box is not None
            if plan is not None:
                step.record(session, box, result, self.ctx)
            following = finish(session, box_id, name, enqueue_next=name not in RUN_AHEAD)
            session.commit()
            return Outcome("succeeded", next_step=following)
        except TeardownCanceledError:
            session.commit()
            return Outcome("stopped", "teardown cancelled by a renewal")
        except NoCapacityError as exc:
            session.rollback()
            reason = self._request_capacity(box_id) or exc.safe_message
            delay = wait_for_capacity(
                session,
                box_id,
                name,
                reason=reason,
                base=p.retry_base_seconds,
                maximum=p.capacity_retry_max_seconds,
            )
            session.commit()
            if delay is None:
                return Outcome("stopped")
            return Outcome("waiting", exc.safe_message, delay=delay)
        except ServerUnusableError as exc:
            session.rollback()
            moved = move_to_another_server(
                session,
                box_id,
                name,
                reason=str(exc.cause),
                safe_reason=exc.safe_message,
                max_moves=p.max_server_moves,
            )
            session.commit()
            if moved is None:
                return Outcome("stopped")
            return Outcome("moved" if moved else "failed", exc.safe_message)
        except PermanentError as exc:
            session.rollback()
            log.warning("box %s: %s failed permanently: %s", box_id, name, exc)
            stopped = not fail(session, box_id, name, safe_error=exc.safe_message)
            session.commit()
            return Outcome("stopped" if stopped else "failed", exc.safe_message)
        except TransientError as exc:
            session.rollback()
            return self._retry_or_fail(box_id, name, exc.safe_message, str(exc))
        except Exception as exc:
            # A bug or a time limit: counted like a transient fault so the budget ends it;
            # the details go to the log only.
            session.rollback()
            log.exception("box %s: %s crashed", box_id, name)
            return self._retry_or_fail(box_id, name, "Internal error; retrying.", repr(exc))

    def _request_capacity(self, box_id: uuid.UUID) -> str | None:
        """Ask the capacity service for a cloud server (committed with the wait); its
        message, or None (no provider serves the box: the pool's shortfall applies)."""
        from app.services import capacity

        try:
            return capacity.request_capacity(
                self.session, box_id, encryption_key=self.ctx.settings.encryption_key
            )
        except Exception:  # the box waits either way; the next attempt asks again
            self.session.rollback()
            log.exception("box %s: capacity request failed", box_id)
            return None

    def _retry_or_fail(self, box_id: uuid.UUID, name: str, safe: str, detail: str) -> Outcome:
        session, p = self.session, self.p
        box = session.get(VibeBox, box_id)
        step = next((s for s in box.steps if s.name == name), None) if box else None
        attempt = step.attempts if step is not None else 0
        if attempt >= p.max_attempts:
            stopped = not fail(session, box_id, name, safe_error=safe)
            session.commit()
            return Outcome("stopped" if stopped else "failed", safe)
        delay = backoff(attempt, p.retry_base_seconds, p.retry_max_seconds)
        scheduled = schedule_retry(session, box_id, name, safe_error=safe, delay=delay)
        session.commit()
        if not scheduled:
            return Outcome("stopped")
        log.info(
            "box %s: %s attempt %s failed (%s); retry in %.1fs",
            box_id,
            name,
            attempt,
            detail,
            delay,
        )
        return Outcome("retry", safe, delay=delay)


# Consecutive steps of one box run in one task: no queue hop between them. Each step is
# still claimed (lease), committed and retried on its own, so a worker that dies mid-chain
# leaves a claimed step (the lease lets the reconciler resume it) or a pending one (the
# redelivered message continues from there: ``StepRunner.run``). What still hops: the first
# step (the API answers before any remote work), retries and capacity waits (a countdown;
# no worker thread sleeps through a backoff), a move to another server and server cleaning.
RUN_AHEAD: dict[str, str] = {
    "create_happy_account": "allocate_server",
    "allocate_server": "configure_server",
    "configure_server": "start_daemon",
    "start_daemon": "mark_running",
    "stop_daemon": "wipe_credentials",
    "wipe_credentials": "verify_clean",
}


def implementations() -> dict[str, Any]:
    """Every step of every workflow, by name."""
    from app.services.boxes.control import ControlAction
    from app.services.boxes.steps import STEP_IMPLEMENTATIONS

    found = {**STEP_IMPLEMENTATIONS, CONTROL_STEP: ControlAction()}
    assert set(found) == set(_BY_STEP), "each workflow step has an implementation"
    return found
