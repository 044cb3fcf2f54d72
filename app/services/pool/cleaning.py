"""Cleaning a server between owners: the scrub over SSH, its failures, back to available."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.integrations import ssh
from app.integrations.box_host import BoxHost
from app.models import Server
from app.services.pool.allocation import wake_waiting_boxes
from app.services.pool.queries import _now, get_server

log = logging.getLogger(__name__)


def cleanliness_problem(box: ssh.BoxSession) -> str | None:
    """What a box from before per-box users left in the pool login's ~/.happy."""
    if box.daemon_status():
        return "the Happy daemon of the pool login still runs"
    result = box.run('d="${HAPPY_HOME_DIR:-$HOME/.happy}"; test -e "$d/access.key" && echo present')
    if "present" in result.output:
        return "the pool login's access.key is still there"
    return None


def scrub(host: BoxHost, server_id: str) -> str | None:
    """Remove every box user we created on the server (and a pre-per-box-user login's
    Happy state), then check by uid; returns what is left (None: clean). Idempotent."""
    problems = []
    for user in host.box_users(server_id):
        host.remove_user(user)
        problem = host.leftovers(user)
        if problem:
            problems.append(problem)
    session = host.session
    if session.run("command -v happy >/dev/null").exit_status == 0:
        session.stop_daemon()
        session.wipe_credentials()
        problem = cleanliness_problem(session)
        if problem:
            problems.append(problem)
    return "; ".join(problems) if problems else None


def record_cleaning_failure(session: Session, server_id: uuid.UUID, reason: str) -> int:
    """A cleaning attempt failed for now: count it (the retry budget lives on the row)."""
    server = get_server(session, server_id, for_update=True)
    server.consecutive_failures += 1
    server.last_error = reason[:2000]
    session.flush()
    return server.consecutive_failures


def servers_in_cleaning(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(Server.id).where(Server.state == "cleaning")))


def finish_cleaning(session: Session, server_id: uuid.UUID) -> Server:
    """A verified-clean server goes back to the pool (a no-op unless it is cleaning)."""
    server = get_server(session, server_id, for_update=True)
    if server.state == "cleaning":
        server.state = "available"
        server.idle_since = _now()
        server.last_error = None
        server.consecutive_failures = 0
        wake_waiting_boxes(session, server)
        log.info("pool: server %s cleaned and available", server.id)
    return server
