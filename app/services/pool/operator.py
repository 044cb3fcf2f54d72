"""Operator actions on pool servers: update, drain/undrain, state changes, remove/retire.

Rules an operator cannot break:

- ``allocated`` is set only by :func:`allocate_server`. Asking for ``available`` on a
  server that still hosts a live box (status <> 'terminated') restores ``allocated``.
- ``draining`` is allowed while a box is on the server and means "do not reallocate after
  release": :func:`release_server` leaves a draining server draining (so do ``retired`` and
  ``unhealthy``: an operator's or the health check's decision outlives the box).
- ``retired`` and ``unhealthy`` are refused while a live box holds the server
  (``server_allocated``), and ``cleaning`` cannot be turned into ``available`` by hand
  (the previous box's credentials may still be on it).
- :func:`remove_server` deletes a server no box ever used; one that boxes reference
  historically is marked ``retired`` instead, so the boxes keep their server id.

Errors: ``server_allocated`` / ``invalid_state_transition`` -> 409, ``server_not_found`` -> 404.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.errors import ConflictError, InvalidStateError, ValidationError
from app.models import Server, VibeBox
from app.services.boxes import events
from app.services.pool.allocation import wake_waiting_boxes
from app.services.pool.queries import _live_box_id, get_server

log = logging.getLogger(__name__)


# States an operator may ask for, by current state (see the module docstring).
OPERATOR_STATES = ("available", "draining", "unhealthy", "retired")


_TRANSITIONS: dict[str, frozenset[str]] = {
    "available": frozenset({"draining", "unhealthy", "retired"}),
    "allocated": frozenset({"available", "draining", "unhealthy", "retired"}),
    "cleaning": frozenset({"draining", "unhealthy", "retired"}),
    "unhealthy": frozenset({"available", "draining", "retired"}),
    "draining": frozenset({"available", "unhealthy", "retired"}),
    "retired": frozenset({"available", "draining"}),
}


_UPDATABLE = frozenset({"label", "region", "cpu_cores", "ram_gb", "disk_gb", "state"})


def update_server(session: Session, server_id: uuid.UUID, **changes: Any) -> Server:
    """Change label, region, resources and/or state (operator rules in the module doc)."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValidationError(
            "These fields cannot be changed", errors={n: ["Unknown field."] for n in unknown}
        )
    for name in ("cpu_cores", "ram_gb", "disk_gb"):
        if name in changes and (not isinstance(changes[name], int) or changes[name] < 1):
            raise ValidationError(
                "Resources must be positive", errors={name: ["Must be at least 1."]}
            )
    server = get_server(session, server_id, for_update=True)
    for name in ("label", "region", "cpu_cores", "ram_gb", "disk_gb"):
        if name in changes:
            setattr(server, name, changes[name])
    if "state" in changes and changes["state"] is not None:
        _change_state(session, server, changes["state"])
    session.flush()
    return server


def _change_state(session: Session, server: Server, wanted: str) -> None:
    if wanted not in OPERATOR_STATES:
        raise ValidationError(
            f"State {wanted!r} cannot be set by hand",
            errors={"state": [f"Must be one of: {', '.join(OPERATOR_STATES)}."]},
        )
    current = server.state
    if wanted == current:
        return
    if wanted not in _TRANSITIONS.get(current, frozenset()):
        raise InvalidStateError(
            f"A server in state {current!r} cannot become {wanted!r}",
            code="invalid_state_transition",
        )
    box_id = _live_box_id(session, server.id)
    if box_id is not None:
        if wanted in ("retired", "unhealthy"):
            raise ConflictError(
                f"Server {server.id} hosts box {box_id}; drain it instead, or wait for the "
                "box to end",
                code="server_allocated",
            )
        if wanted == "available":
            wanted = "allocated"  # un-draining a server that still hosts its box
        box = session.get(VibeBox, box_id)
        if box is not None and wanted != current:
            events.record(
                session,
                box,
                f"server_{wanted}",
                f"An operator set this box's server to {wanted}"
                + (
                    " (no new boxes on it; this one keeps running)."
                    if wanted == "draining"
                    else "."
                ),
            )
    server.state = wanted
    if wanted == "available":
        wake_waiting_boxes(session, server)
    log.info("pool: server %s state %s -> %s (operator)", server.id, current, wanted)


def drain_server(session: Session, server_id: uuid.UUID) -> Server:
    """Take a server out of allocation; a box already on it keeps running. Idempotent."""
    return update_server(session, server_id, state="draining")


def remove_server(session: Session, server_id: uuid.UUID) -> Literal["deleted", "retired"]:
    """Delete a server no box ever used, else mark it ``retired`` (boxes keep their history).

    Refused (409 ``server_allocated``) while a live box holds it.
    """
    server = get_server(session, server_id, for_update=True)
    box_id = _live_box_id(session, server.id)
    if box_id is not None:
        raise ConflictError(
            f"Server {server.id} hosts box {box_id}; it can be removed once the box ends "
            "(drain it to stop new allocations)",
            code="server_allocated",
        )
    referenced = session.scalar(select(exists().where(VibeBox.server_id == server.id)))
    if referenced:
        server.state = "retired"
        session.flush()
        log.info("pool: server %s retired (boxes reference it)", server.id)
        return "retired"
    session.delete(server)
    session.flush()
    log.info("pool: server %s deleted", server_id)
    return "deleted"
