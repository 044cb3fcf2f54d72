"""VibeBoxes: creation and reading (the status document owners poll is in
``app.services.boxes.status_document``).

What happens to a box afterwards (its status, its steps, retries, teardown) is the
lifecycle engine's business (``app.services.boxes.engine``); what each step does lives in
``app.services.boxes.steps``.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from app.errors import NotFoundError
from app.models import (
    Plan,
    ProvisioningStep,
    User,
    VibeBox,
)
from app.services import jobs
from app.services.boxes.statuses import BoxStatus

log = logging.getLogger(__name__)

STEPS: tuple[str, ...] = (
    "create_happy_account",
    "allocate_server",
    "configure_server",
    "start_daemon",
    "mark_running",
)
# Teardown (subscription ended): the same step engine, a second phase of the timeline.
TEARDOWN_STEPS: tuple[str, ...] = ("stop_daemon", "wipe_credentials", "verify_clean")


# --- boxes ---------------------------------------------------------------------------


def get_plan(session: Session, plan_id: str) -> Plan:
    """An active plan; 404 ``plan_not_found`` otherwise."""
    plan = session.get(Plan, plan_id)
    if plan is None or not plan.active:
        raise NotFoundError("No such plan", code="plan_not_found")
    return plan


def create_vibebox(
    session: Session,
    *,
    user_id: uuid.UUID,
    plan_id: str,
    subscription_id: uuid.UUID | None = None,
    order_id: uuid.UUID | None = None,
    region: str | None = None,
) -> VibeBox:
    """A pending box with its five pending steps; its provisioning is enqueued for when the
    caller commits. ``region`` was resolved by the caller (``regions.resolve_region``);
    None: any server."""
    if session.get(User, user_id) is None:
        raise NotFoundError("No such user", code="user_not_found")
    plan = session.get(Plan, plan_id)
    if plan is None or not plan.active:
        raise NotFoundError("No such plan", code="plan_not_found")
    box = VibeBox(
        user_id=user_id,
        plan_id=plan_id,
        subscription_id=subscription_id,
        order_id=order_id,
        region=region,
        status=BoxStatus.PENDING,
        step=STEPS[0],
        steps=[ProvisioningStep(name=n, position=i, state="pending") for i, n in enumerate(STEPS)],
    )
    session.add(box)
    session.flush()
    jobs.enqueue(session, box.id, STEPS[0])
    return box


def get_box(session: Session, box_id: uuid.UUID, *, owner_id: uuid.UUID | None = None) -> VibeBox:
    """A box with its steps (one query); with ``owner_id``, other users' boxes are 'not
    found'."""
    box = (
        session.execute(
            select(VibeBox).options(joinedload(VibeBox.steps)).where(VibeBox.id == box_id)
        )
        .unique()
        .scalar_one_or_none()
    )
    if box is None or (owner_id is not None and box.user_id != owner_id):
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    return box


def list_boxes(session: Session, owner_id: uuid.UUID) -> list[VibeBox]:
    return list(
        session.scalars(
            select(VibeBox)
            .options(selectinload(VibeBox.steps))
            .where(VibeBox.user_id == owner_id)
            .order_by(VibeBox.created_at.desc(), VibeBox.id)
        )
    )
