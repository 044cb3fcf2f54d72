"""Owner control actions on a running box: start, stop, restart.

The API moves the box to a transitional status (one action at a time, under the box's row
lock); a worker task does the SSH work and confirms the result against the Happy server's
daemonState before the box shows ``running`` or ``stopped``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import (
    ConflictError,
    InvalidStateError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from app.integrations.box_host import BoxHost, BoxUser
from app.integrations.happy import HappyCredentials
from app.integrations.ssh import SSHTarget
from app.models import Server, VibeBox
from app.services import events, happy_accounts, pool
from app.services.provisioning import utcnow
from app.services.steps import StepContext, bring_up_daemon, wait_for_daemon

log = logging.getLogger(__name__)

# action -> (statuses it may start from, transitional status, final status)
ACTIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "start": (("stopped",), "starting", "running"),
    "stop": (("running",), "stopping", "stopped"),
    "restart": (("running", "stopped"), "restarting", "running"),
}
TRANSITIONAL = {spec[1]: action for action, spec in ACTIONS.items()}


def request_action(
    session: Session, box_id: uuid.UUID, *, owner_id: uuid.UUID, action: str
) -> VibeBox:
    """Validate and record the action; the caller commits and enqueues ``control.run``."""
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is None or box.user_id != owner_id:
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    if box.status in TRANSITIONAL:
        raise ConflictError(
            f"Another action is in progress ({box.status})",
            code="action_in_progress",
            extra={"status": box.status},
        )
    allowed, transitional, _ = ACTIONS[action]
    if box.status not in allowed:
        raise InvalidStateError(
            f"Cannot {action} a VibeBox that is {box.status}",
            code="invalid_transition",
            extra={"status": box.status},
        )
    box.resume_status = box.status
    box.status = transitional
    box.step = action
    box.attempts = 0
    box.last_error = None
    box.next_retry_at = None
    log.info("box %s: %s requested", box.id, action)
    return box


@dataclass(frozen=True)
class ActionPlan:
    box_id: uuid.UUID
    action: str
    target: SSHTarget
    user: BoxUser
    creds: HappyCredentials
    machine_id: str


def plan_action(session: Session, box_id: uuid.UUID, ctx: StepContext) -> ActionPlan | None:
    """What the worker must do for the box's pending action (None: nothing pending).
    Counts the attempt."""
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is None or box.status not in TRANSITIONAL:
        return None
    action = TRANSITIONAL[box.status]
    server = session.get(Server, box.server_id) if box.server_id else None
    creds = happy_accounts.get_credentials(session, box.user_id, ctx.settings.encryption_key)
    if server is None or creds is None or not box.happy_machine_id or not box.unix_user:
        raise PermanentError(
            "box has no server/account/machine/unix user", safe_message="Internal error."
        )
    box.attempts += 1
    return ActionPlan(
        box_id=box.id,
        action=action,
        target=pool.ssh_target_for(server, ctx.settings.encryption_key),
        user=BoxUser(box.unix_user, box.unix_uid),
        creds=creds,
        machine_id=box.happy_machine_id,
    )


def execute_action(plan: ActionPlan, ctx: StepContext) -> dict[str, Any]:
    """SSH, then confirmation; no database. Returns what was observed.

    Liveness on the box is the first signal: ``stop`` ends the daemon AND every process of
    the box user (a Happy session is a shell for whoever holds the account: stopped means
    nobody is on the box any more) and is confirmed by uid on the box alone, so stopping a
    crashed daemon succeeds at once. ``start``/``restart`` then wait for the Happy server
    to list the machine running with the new daemon's pid (the second signal).
    """

    def act(host: BoxHost) -> tuple[int, int | None]:
        ended = 0
        if plan.action in ("stop", "restart"):
            ended = host.end_all_processes(plan.user)
        if plan.action == "stop":
            return ended, None
        bring_up_daemon(host, plan.user, plan.creds, ctx)
        liveness = host.liveness(plan.user)
        if not liveness.alive:
            raise _transient("the daemon is not alive on the box after `happy daemon start`")
        return ended, liveness.pid

    ended, pid = ctx.on_host(plan.target, act)
    if plan.action == "stop":
        return {"processesEnded": ended}
    machine = wait_for_daemon(
        ctx,
        plan.creds,
        plan.machine_id,
        lambda m: m.daemon_status == "running" and (m.daemon_state or {}).get("pid") == pid,
    )
    return {"processesEnded": ended, "daemonState": machine.daemon_state}


def _transient(message: str) -> Exception:
    return TransientError(message, safe_message="The Happy daemon did not change state yet.")


def finish_action(
    session: Session, box_id: uuid.UUID, observed: dict[str, Any] | None = None
) -> str | None:
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is None or box.status not in TRANSITIONAL:
        return None
    action = TRANSITIONAL[box.status]
    ended = (observed or {}).get("processesEnded", 0)
    message = {
        "start": "Started: the Happy daemon runs again.",
        "stop": f"Stopped: the Happy daemon and all sessions ended ({ended} processes).",
        "restart": f"Restarted: every process ended ({ended}), the Happy daemon started.",
    }[action]
    events.record(session, box, action, message)
    if action in ("start", "restart") and box.degraded_reason and box.degraded_since:
        box.degraded_since = None  # an owner's (re)start clears a daemon that was down
        box.degraded_reason = None
    box.daemon_restarts = 0
    box.status = ACTIONS[action][2]
    box.step = None
    box.attempts = 0
    box.last_error = None
    box.next_retry_at = None
    box.resume_status = None
    log.info("box %s: %s done (%s)", box.id, action, box.status)
    return box.status


def attempts_of(session: Session, box_id: uuid.UUID) -> int:
    box = session.get(VibeBox, box_id)
    return box.attempts if box is not None else 0


def retry_action(session: Session, box_id: uuid.UUID, *, safe_error: str, delay: float) -> None:
    """Record a failed attempt and when the next one is due (also the reconciler's mark)."""
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is None:
        return
    box.last_error = safe_error
    box.next_retry_at = utcnow() + timedelta(seconds=delay)


def fail_action(session: Session, box_id: uuid.UUID, *, safe_error: str) -> None:
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is None or box.status not in TRANSITIONAL:
        return
    log.warning("box %s: %s failed: %s", box.id, TRANSITIONAL[box.status], safe_error)
    box.status = "error"
    box.last_error = safe_error
    box.next_retry_at = None


def stuck_actions(session: Session, *, older_than: float) -> list[uuid.UUID]:
    """Boxes whose control action made no progress (a lost message, a killed worker)."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return list(
        session.scalars(
            select(VibeBox.id).where(
                VibeBox.status.in_(tuple(TRANSITIONAL)),
                func.coalesce(VibeBox.next_retry_at, VibeBox.updated_at) < cutoff,
            )
        )
    )
