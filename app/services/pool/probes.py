"""Health records of pool servers: a health-check probe's result, quarantine."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from app.models import Server
from app.services.pool.queries import _live_box_id, _now, get_server

log = logging.getLogger(__name__)


def quarantine_server(session: Session, server_id: uuid.UUID, reason: str) -> Server:
    """Mark a server ``unhealthy`` with ``reason`` (it is not allocated again until a probe
    or an operator restores it). Boxes are the caller's business: move them first."""
    server = get_server(session, server_id, for_update=True)
    previous = server.state
    if previous != "retired":
        server.state = "unhealthy"
    server.last_error = reason[:2000]
    server.consecutive_failures += 1
    session.flush()
    log.warning("pool: server %s quarantined (was %s): %s", server.id, previous, reason)
    return server


def record_server_probe(
    session: Session,
    server_id: uuid.UUID,
    ok: bool,
    latency_ms: int | None,
    error: str | None,
    *,
    unhealthy_after: int = 3,
) -> Server:
    """Record one health-check probe on the server row.

    ``unhealthy_after`` consecutive failures turn an ``available`` server ``unhealthy``; a
    successful probe resets the counter and sends an ``unhealthy`` server without a live box
    to ``cleaning`` (it may still hold a previous owner's credentials: it is scrubbed and
    verified before it is ``available`` again). Other states (allocated, cleaning, draining,
    retired) only get their counters updated.
    """
    server = get_server(session, server_id, for_update=True)
    server.last_checked_at = _now()
    if ok:
        server.consecutive_failures = 0
        server.last_latency_ms = latency_ms
        server.last_error = None
        if server.state == "unhealthy" and _live_box_id(session, server.id) is None:
            server.state = "cleaning"
            log.info("pool: server %s answers again; cleaning it before reuse", server.id)
    else:
        server.consecutive_failures += 1
        server.last_error = (error or "probe failed")[:2000]
        if server.state == "available" and server.consecutive_failures >= unhealthy_after:
            server.state = "unhealthy"
            log.warning(
                "pool: server %s unhealthy after %d failed probes: %s",
                server.id,
                server.consecutive_failures,
                server.last_error,
            )
    session.flush()
    return server
