"""The status document an owner polls (and the admin API returns), and its version.

``describe_box`` gathers what the document needs from the database and the settings (events,
the decrypted connection info) into a ``BoxStatusView``; ``app.api.vibeboxes.schemas`` renders it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Select, Text, bindparam, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidStateError, NotFoundError
from app.integrations.happy import HappyCredentials
from app.models import (
    BoxEvent,
    HappyAccount,
    HappyServerToken,
    ProvisioningStep,
    Server,
    VibeBox,
)
from app.services.boxes import events, happy_accounts
from app.services.boxes.provisioning import STEPS, TEARDOWN_STEPS
from app.services.boxes.statuses import BoxStatus


def _box_version_query() -> Select[Any]:
    """The statement of ``box_version``, built once (Core, on the tables: no ORM or cache-key
    work per poll); its only parameter is ``box_id``."""
    box, step = VibeBox.__table__.c, ProvisioningStep.__table__.c
    event, account, token = (
        BoxEvent.__table__.c,
        HappyAccount.__table__.c,
        HappyServerToken.__table__.c,
    )
    steps = (
        select(
            func.coalesce(
                func.string_agg(
                    step.name
                    + ":"
                    + step.state
                    + ":"
                    + cast(step.attempts, Text)
                    + ":"
                    + cast(step.updated_at, Text),
                    aggregate_order_by(literal_column("','"), step.position),
                ),
                "",
            )
        )
        .where(step.vibebox_id == box.id)
        .scalar_subquery()
    )
    box_events = (
        select(func.concat(func.count(), "@", func.max(event.created_at)))
        .where(event.vibebox_id == box.id)
        .scalar_subquery()
    )
    happy_account = (
        select(func.max(account.updated_at)).where(account.user_id == box.user_id).scalar_subquery()
    )
    server_tokens = (
        select(func.concat(func.count(), "@", func.max(token.updated_at)))
        .where(token.user_id == box.user_id)
        .scalar_subquery()
    )
    return select(
        box.user_id, box.updated_at, box.status, steps, box_events, happy_account, server_tokens
    ).where(box.id == bindparam("box_id"))


_BOX_VERSION = _box_version_query()


def box_version(
    session: Session, box_id: uuid.UUID, *, owner_id: uuid.UUID | None = None
) -> list[str]:
    """What the box's status document is made of, in one small query: a new value whenever
    the document may have changed. The status poll's ETag hashes it, so a 304 costs this
    query and no document (and the API's rendered-document cache is keyed by it).

    Every write that changes the document moves one of these: the box row and its steps
    carry ``updated_at`` (``onupdate``, also in Core UPDATEs; strings of every step, so two
    transactions that stamp different steps with the same time still differ), events are
    append-only (count and newest), and ``connectionInfo`` follows the owner's Happy
    accounts. (The writes are the ones ``box_watch`` publishes for long polls.)
    Raises 404 like ``get_box``.
    """
    row = session.connection().execute(_BOX_VERSION, {"box_id": box_id}).one_or_none()
    if row is None or (owner_id is not None and row.user_id != owner_id):
        raise NotFoundError("No such VibeBox", code="vibebox_not_found")
    return [str(value) for value in row[1:]]


class Progress(NamedTuple):
    done: int
    total: int


@dataclass(frozen=True)
class ConnectionInfo:
    """How the owner gets into a running box. It carries credentials: owner-only."""

    happy_web_url: str


@dataclass(frozen=True)
class BoxStatusView:
    """What the owner's status document shows of a box: the box (its steps are the
    timeline), its progress, its recent events (oldest first) and, while it is running, the
    connection info (None otherwise, and never for operators)."""

    box: VibeBox
    progress: Progress
    events: tuple[BoxEvent, ...]
    connection_info: ConnectionInfo | None


def progress(box: VibeBox) -> Progress:
    """Steps done of the box's workflow: provisioning (control actions do not count), or
    teardown once it began."""
    names = (
        TEARDOWN_STEPS
        if box.status in (BoxStatus.TERMINATING, BoxStatus.TERMINATED)
        and any(s.name in TEARDOWN_STEPS for s in box.steps)
        else STEPS
    )
    steps = [s for s in box.steps if s.name in names]
    done = sum(1 for s in steps if s.state in ("succeeded", "skipped"))
    return Progress(done, len(names))


def web_url(settings: Settings, creds: HappyCredentials) -> str:
    """The Happy web URL. It carries credentials: owner-only, never logged."""
    from urllib.parse import urlencode

    query = urlencode({"token": creds.token, "secret": creds.secret_b64, "embedded": "true"})
    return f"{settings.happy_web_url}?{query}"


def connection_info(session: Session, settings: Settings, box: VibeBox) -> ConnectionInfo | None:
    """The Happy web URL of a running box, else None. (No SSH command: the pool login
    is the operator's channel; the customer's shell on the box is a Happy session.)"""
    if box.status != BoxStatus.RUNNING or box.server_id is None:
        return None
    creds = happy_accounts.get_credentials(
        session, box.user_id, settings.encryption_key, server_url=settings.happy_realm(box.region)
    )
    server = session.get(Server, box.server_id)
    if creds is None or server is None:
        return None
    return ConnectionInfo(happy_web_url=web_url(settings, creds))


def connect_url(session: Session, settings: Settings, box: VibeBox) -> str:
    info = connection_info(session, settings, box)
    if info is None:
        raise InvalidStateError(
            f"The VibeBox is {box.status}; it can be opened once it is running",
            code="vibebox_not_running",
            extra={"status": box.status},
        )
    return info.happy_web_url


def describe_box(
    session: Session, settings: Settings, box: VibeBox, *, with_connection_info: bool = True
) -> BoxStatusView:
    """The status document the owner polls (and the admin API returns, without
    ``with_connection_info``: the owner's credentials are never decrypted for operators)."""
    return BoxStatusView(
        box=box,
        progress=progress(box),  # loads the steps: the timeline
        events=tuple(events.recent(session, box.id)),
        connection_info=connection_info(session, settings, box) if with_connection_info else None,
    )
