"""Watching each running box's Happy daemon on its server (part of the pool health sweep).

The Happy server's ``daemonState`` is the daemon's last report, not liveness: after a
``kill -9`` it says "running" forever. So liveness is read on the box (the pid in the box
user's ``daemon.state.json``, alive as that uid). A crashed daemon is restarted
automatically, at most ``DAEMON_MAX_RESTARTS`` times per ``DAEMON_RESTART_WINDOW_SECONDS``
with a doubling ``DAEMON_RESTART_BACKOFF_SECONDS`` between restarts; the box is ``degraded``
while its daemon is down and stays degraded, with the reason, once restarts are used up.
Every crash and restart is an event in the box's timeline.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import IntegrationError
from app.integrations.box_host import BoxHost, BoxUser
from app.integrations.happy import HappyCredentials
from app.models import VibeBox
from app.services.boxes import events, happy_accounts
from app.services.boxes.statuses import BoxStatus
from app.services.boxes.steps import StepContext, bring_up_daemon
from app.timeutil import utcnow

log = logging.getLogger(__name__)

DOWN = "The Happy daemon stopped unexpectedly; restarting it."
BACKING_OFF = "The Happy daemon keeps stopping; the next automatic restart is due shortly."
DAEMON_REASONS_PREFIX = "The Happy daemon"


@dataclass(frozen=True)
class WatchPlan:
    box_id: uuid.UUID
    user: BoxUser
    creds: HappyCredentials
    may_restart: bool
    region: str | None = None


@dataclass(frozen=True)
class WatchResult:
    alive: bool  # the daemon was alive when we looked
    restarted: bool = False
    found: str | None = None  # why a restart did not work (safe to show)


def _restarts_in_window(box: VibeBox, settings: Settings) -> int:
    window = timedelta(seconds=settings.provisioning.daemon_restart_window_seconds)
    if box.daemon_restarted_at is None or utcnow() - box.daemon_restarted_at > window:
        return 0
    return box.daemon_restarts


def _may_restart(box: VibeBox, settings: Settings) -> bool:
    p = settings.provisioning
    count = _restarts_in_window(box, settings)
    if count >= p.daemon_max_restarts:
        return False
    if count and box.daemon_restarted_at is not None:
        wait = p.daemon_restart_backoff_seconds * 2 ** (count - 1)
        return utcnow() >= box.daemon_restarted_at + timedelta(seconds=wait)
    return True


def plan_watch(session: Session, server_id: uuid.UUID, settings: Settings) -> WatchPlan | None:
    """The running box on ``server_id`` whose daemon to check (None: nothing to watch)."""
    box = session.scalar(
        select(VibeBox).where(VibeBox.server_id == server_id, VibeBox.status == BoxStatus.RUNNING)
    )
    if box is None or not box.unix_user:
        return None
    creds = happy_accounts.get_credentials(
        session, box.user_id, settings.encryption_key, server_url=settings.happy_realm(box.region)
    )
    if creds is None:
        return None
    return WatchPlan(
        box.id,
        BoxUser(box.unix_user, box.unix_uid),
        creds,
        _may_restart(box, settings),
        box.region,
    )


def check_daemon(host: BoxHost, plan: WatchPlan, ctx: StepContext) -> WatchResult:
    """Remote only: is the daemon alive as the box user; if not (and allowed) restart it."""
    if host.liveness(plan.user).alive:
        return WatchResult(alive=True)
    if not plan.may_restart:
        return WatchResult(alive=False)
    try:
        forced = ctx.settings.regions.configured_happy_url(plan.region)
        if forced is not None:  # the daemon talks to its region's Happy server
            host = host.with_happy_server_url(forced)
        bring_up_daemon(host, plan.user, plan.creds, ctx, region=plan.region)
    except IntegrationError as exc:
        log.warning("box %s: automatic daemon restart failed: %s", plan.box_id, exc)
        return WatchResult(alive=False, found=exc.safe_message)
    return WatchResult(alive=False, restarted=host.liveness(plan.user).alive)


def record_watch(
    session: Session, box_id: uuid.UUID, result: WatchResult, settings: Settings
) -> None:
    """Apply what the watch saw (a box whose owner acted meanwhile is left alone)."""
    box = session.get(VibeBox, box_id, with_for_update=True, populate_existing=True)
    if box is None or box.status != BoxStatus.RUNNING:
        return
    daemon_degraded = (box.degraded_reason or "").startswith(DAEMON_REASONS_PREFIX)
    if result.alive:
        if daemon_degraded:
            events.record(session, box, "daemon_recovered", "The Happy daemon runs again.")
            box.degraded_since = box.degraded_reason = None
        return
    p = settings.provisioning
    now = utcnow()
    count = _restarts_in_window(box, settings)
    if not daemon_degraded:
        events.record(session, box, "daemon_down", "The Happy daemon stopped unexpectedly.")
        log.warning("box %s: the Happy daemon is not running on its server", box.id)
    if result.restarted:
        box.daemon_restarts = count + 1
        box.daemon_restarted_at = now
        events.record(
            session,
            box,
            "daemon_restarted",
            f"The Happy daemon was restarted automatically ({count + 1} of "
            f"{p.daemon_max_restarts} allowed per {_hours(p.daemon_restart_window_seconds)}).",
        )
        if daemon_degraded or box.degraded_since is None:
            box.degraded_since = box.degraded_reason = None
        return
    box.degraded_since = box.degraded_since or now
    if count >= p.daemon_max_restarts:
        reason = (
            f"The Happy daemon stopped {count + 1} times within "
            f"{_hours(p.daemon_restart_window_seconds)}; automatic restarts are paused. "
            "Restart the box to try again; if it keeps stopping, contact support."
        )
        if box.degraded_reason != reason:
            events.record(session, box, "daemon_gave_up", reason)
    elif result.found:
        reason = f"The Happy daemon is down and could not be restarted yet: {result.found}"
    else:
        reason = DOWN if count == 0 else BACKING_OFF
    box.degraded_reason = reason


def _hours(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "an hour" if hours == 1 else f"{hours} hours"
    return f"{int(seconds)} seconds"
