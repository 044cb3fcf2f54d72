"""Operator views of VibeBoxes: the filtered, paged list and the full document (rendered by
``app.api.admin.schemas``: ``AdminBoxSummarySchema`` for a listed box, ``AdminBoxSchema``).

Read-only: what happens to a box is the engine's business (``app.services.boxes.engine``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.config import Settings
from app.models import VibeBox
from app.services.boxes import status_document
from app.services.boxes.statuses import BoxStatus


@dataclass(frozen=True)
class BoxFilter:
    """Every field left None matches all boxes."""

    status: str | None = None
    degraded: bool | None = None
    waiting: bool | None = None  # True: waiting_for_capacity only; False: all others
    user_id: uuid.UUID | None = None
    server_id: uuid.UUID | None = None
    plan_id: str | None = None
    region: str | None = None


def _conditions(f: BoxFilter) -> list[Any]:
    conditions: list[Any] = []
    if f.status is not None:
        conditions.append(VibeBox.status == f.status)
    if f.degraded is not None:
        conditions.append(
            VibeBox.degraded_since.is_not(None) if f.degraded else VibeBox.degraded_since.is_(None)
        )
    if f.waiting is not None:
        waiting = VibeBox.status == BoxStatus.WAITING_FOR_CAPACITY
        conditions.append(waiting if f.waiting else ~waiting)
    if f.user_id is not None:
        conditions.append(VibeBox.user_id == f.user_id)
    if f.server_id is not None:
        conditions.append(VibeBox.server_id == f.server_id)
    if f.plan_id is not None:
        conditions.append(VibeBox.plan_id == f.plan_id)
    if f.region is not None:
        conditions.append(VibeBox.region == f.region)
    return conditions


def list_boxes(
    session: Session, f: BoxFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[VibeBox], int]:
    """Boxes matching ``f``, newest first, one page; and how many match in all."""
    conditions = _conditions(f)
    total = session.scalar(select(func.count()).select_from(VibeBox).where(*conditions)) or 0
    boxes = session.scalars(
        select(VibeBox)
        .options(selectinload(VibeBox.steps))
        .where(*conditions)
        .order_by(VibeBox.created_at.desc(), VibeBox.id)
        .limit(limit)
        .offset(offset)
    )
    return list(boxes), total


def describe(session: Session, settings: Settings, box: VibeBox) -> status_document.BoxStatusView:
    """The owner's status document (timeline, events), which ``AdminBoxSchema`` shows with
    operator fields. The owner's connection info carries their Happy credentials: operators
    never get it (it is not even decrypted)."""
    return status_document.describe_box(session, settings, box, with_connection_info=False)
