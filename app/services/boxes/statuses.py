"""Box statuses and the named transitions between them: the table the engine enforces."""

from __future__ import annotations

import enum

from app.errors import InvalidStateError
from app.models import VibeBox


class BoxStatus(enum.StrEnum):
    PENDING = "pending"
    WAITING_FOR_CAPACITY = "waiting_for_capacity"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    ERROR = "error"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


S = BoxStatus
PROVISIONING_STATUSES = frozenset({S.PENDING, S.WAITING_FOR_CAPACITY, S.PROVISIONING})
ACTION_STATUS = {"start": S.STARTING, "stop": S.STOPPING, "restart": S.RESTARTING}
ACTION_OF = {status: action for action, status in ACTION_STATUS.items()}
ACTION_FROM = {"start": {S.STOPPED}, "stop": {S.RUNNING}, "restart": {S.RUNNING, S.STOPPED}}
ACTION_TO = {"start": S.RUNNING, "stop": S.STOPPED, "restart": S.RUNNING}
CONTROL_STATUSES = frozenset(ACTION_STATUS.values())
# Statuses that wait for a person (owner or admin) rather than for the engine.
SETTLED = frozenset({S.RUNNING, S.STOPPED, S.ERROR, S.TERMINATED})
LIVE = frozenset(set(S) - {S.TERMINATED})

# name -> (allowed from-statuses, to-status; None = given by the caller, checked by `to_any`)
TRANSITIONS: dict[str, tuple[frozenset[BoxStatus], BoxStatus | None]] = {
    "claim_provision_step": (PROVISIONING_STATUSES, S.PROVISIONING),
    "wait_for_capacity": (PROVISIONING_STATUSES, S.WAITING_FOR_CAPACITY),
    "provisioned": (frozenset({S.PROVISIONING, S.WAITING_FOR_CAPACITY}), S.RUNNING),
    "request_start": (frozenset(ACTION_FROM["start"]), S.STARTING),
    "request_stop": (frozenset(ACTION_FROM["stop"]), S.STOPPING),
    "request_restart": (frozenset(ACTION_FROM["restart"]), S.RESTARTING),
    "action_done": (CONTROL_STATUSES, None),
    "fail": (PROVISIONING_STATUSES | CONTROL_STATUSES, S.ERROR),
    "admin_retry": (frozenset({S.ERROR}), None),
    "terminate": (LIVE - {S.TERMINATING}, S.TERMINATING),
    "end_without_server": (LIVE - {S.TERMINATING}, S.TERMINATED),
    "cancel_teardown": (frozenset({S.TERMINATING}), None),
    "terminated": (frozenset({S.TERMINATING}), S.TERMINATED),
}
# Where a transition with a caller-given target may go.
TO_ANY: dict[str, frozenset[BoxStatus]] = {
    "action_done": frozenset({S.RUNNING, S.STOPPED}),
    "admin_retry": PROVISIONING_STATUSES | CONTROL_STATUSES,
    "cancel_teardown": LIVE - {S.TERMINATING},
}


class IllegalTransitionError(InvalidStateError):
    """A transition the table does not allow from the box's current status."""

    code = "invalid_transition"


def transition(box: VibeBox, name: str, to: BoxStatus | None = None) -> BoxStatus:
    """Move ``box`` along the named transition; the only writer of ``box.status``."""
    allowed, target = TRANSITIONS[name]
    current = BoxStatus(box.status)
    if current not in allowed:
        raise IllegalTransitionError(
            f"Cannot {name.replace('_', ' ')} a VibeBox that is {current}",
            extra={"status": str(current)},
        )
    if target is None:
        if to is None or to not in TO_ANY[name]:
            raise ValueError(f"transition {name} needs a target in {sorted(TO_ANY[name])}")
        target = to
    box.status = str(target)
    return target


def may(box: VibeBox, name: str) -> bool:
    return BoxStatus(box.status) in TRANSITIONS[name][0]
