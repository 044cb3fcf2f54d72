"""Box events: what happened to a box outside its steps (daemon crashed and restarted,
owner stopped it, ...). Owners read them in the box's document next to the step timeline."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import BoxEvent, VibeBox

log = logging.getLogger(__name__)

SHOWN = 20  # newest events in a box document


def record(session: Session, box: VibeBox, kind: str, message: str) -> BoxEvent:
    """Append an event (``message`` is shown to the owner: no internals, no secrets)."""
    event = BoxEvent(vibebox_id=box.id, kind=kind, message=message)
    session.add(event)
    log.info("box %s: event %s: %s", box.id, kind, message)
    return event


def recent(session: Session, box_id: uuid.UUID, limit: int = SHOWN) -> list[BoxEvent]:
    """The box's newest ``limit`` events, oldest first."""
    rows = session.scalars(
        select(BoxEvent)
        .where(BoxEvent.vibebox_id == box_id)
        .order_by(BoxEvent.created_at.desc(), BoxEvent.id)
        .limit(limit)
    ).all()
    return list(reversed(rows))
