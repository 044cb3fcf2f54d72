"""The owner's control actions on a box: start, stop, restart.

The engine records the request (``engine.request_action``) and runs the ``control`` step
below like any other step, with the same retry / fail policy; ``finish`` moves the box to
``running`` or ``stopped``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.errors import PermanentError, TransientError
from app.integrations.box_host import BoxHost, BoxUser
from app.integrations.happy import HappyCredentials
from app.integrations.ssh import SSHTarget
from app.models import Server, VibeBox
from app.services import pool
from app.services.boxes import events, happy_accounts
from app.services.boxes.steps import Step, StepContext, bring_up_daemon, wait_for_daemon

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionPlan:
    box_id: uuid.UUID
    action: str
    target: SSHTarget
    user: BoxUser
    creds: HappyCredentials
    machine_id: str
    region: str | None = None


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
        bring_up_daemon(host, plan.user, plan.creds, ctx, region=plan.region)
        liveness = host.liveness(plan.user)
        if not liveness.alive:
            raise _transient("the daemon is not alive on the box after `happy daemon start`")
        return ended, liveness.pid

    ended, pid = ctx.on_host(plan.target, act, region=plan.region)
    if plan.action == "stop":
        return {"processesEnded": ended}
    machine = wait_for_daemon(
        ctx,
        plan.creds,
        plan.machine_id,
        lambda m: m.daemon_status == "running" and (m.daemon_state or {}).get("pid") == pid,
        region=plan.region,
    )
    return {"processesEnded": ended, "daemonState": machine.daemon_state}


def _transient(message: str) -> Exception:
    return TransientError(message, safe_message="The Happy daemon did not change state yet.")


class ControlAction(Step):
    """The ``control`` step: carry out the box's pending action and confirm it."""

    name = "control"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> ActionPlan | None:
        action = box.action
        server = session.get(Server, box.server_id) if box.server_id else None
        creds = happy_accounts.get_credentials(
            session,
            box.user_id,
            ctx.settings.encryption_key,
            server_url=ctx.settings.happy_realm(box.region),
        )
        if (
            action is None
            or server is None
            or creds is None
            or not box.happy_machine_id
            or not box.unix_user
        ):
            raise PermanentError(
                "box has no action/server/account/machine/unix user",
                safe_message="Internal error.",
            )
        return ActionPlan(
            box_id=box.id,
            action=action,
            target=pool.ssh_target_for(server, ctx.settings.encryption_key),
            user=BoxUser(box.unix_user, box.unix_uid),
            creds=creds,
            machine_id=box.happy_machine_id,
            region=box.region,
        )

    def execute(self, plan: ActionPlan, ctx: StepContext) -> dict[str, Any]:
        return execute_action(plan, ctx)

    def record(self, session: Session, box: VibeBox, result: Any, ctx: StepContext) -> None:
        action = box.action or ""
        ended = (result or {}).get("processesEnded", 0)
        message = {
            "start": "Started: the Happy daemon runs again.",
            "stop": f"Stopped: the Happy daemon and all sessions ended ({ended} processes).",
            "restart": f"Restarted: every process ended ({ended}), the Happy daemon started.",
        }.get(action, f"{action} done.")
        events.record(session, box, action, message)
        if action in ("start", "restart") and box.degraded_since is not None:
            box.degraded_since = None  # the owner's (re)start brought the daemon back
            box.degraded_reason = None
        box.daemon_restarts = 0
