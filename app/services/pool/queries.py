"""Reading the pool: one server, lists and pages of them, and the live box each hosts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.models import Server, VibeBox
from app.services.boxes.statuses import BoxStatus
from app.services.pool.specs import EnvironmentChecks

LIVE_BOX = VibeBox.status != BoxStatus.TERMINATED


@dataclass(frozen=True)
class ServerView:
    """A server with the live box it hosts (what the API and CLI show)."""

    server: Server
    allocated_box_id: uuid.UUID | None
    checks: EnvironmentChecks | None = None  # only right after admission


def _now() -> datetime:
    return datetime.now(UTC)


def _find(session: Session, host: str, port: int, user: str) -> Server | None:
    return session.scalars(
        select(Server).where(Server.host == host, Server.ssh_port == port, Server.ssh_user == user)
    ).first()


def get_server(session: Session, server_id: uuid.UUID, *, for_update: bool = False) -> Server:
    """The server, or 404 ``server_not_found``. ``for_update`` locks its row."""
    stmt = select(Server).where(Server.id == server_id)
    if for_update:
        stmt = stmt.with_for_update()
    server = session.scalars(stmt).first()
    if server is None:
        raise NotFoundError(f"No server {server_id}", code="server_not_found")
    return server


def list_servers(session: Session, state: str | None = None) -> list[Server]:
    """Pool servers, oldest first, optionally only those in ``state``."""
    stmt = select(Server).order_by(Server.created_at, Server.id)
    if state is not None:
        stmt = stmt.where(Server.state == state)
    return list(session.scalars(stmt))


def page_servers(
    session: Session, state: str | None = None, *, limit: int = 50, offset: int = 0
) -> tuple[list[Server], int]:
    """One page of :func:`list_servers` and how many servers match in all."""
    stmt = select(Server)
    if state is not None:
        stmt = stmt.where(Server.state == state)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = session.scalars(stmt.order_by(Server.created_at, Server.id).limit(limit).offset(offset))
    return list(page), total


def live_box_ids(session: Session, server_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """Server id -> id of the live (not terminated) box on it."""
    ids = list(server_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(VibeBox.server_id, VibeBox.id).where(VibeBox.server_id.in_(ids), LIVE_BOX)
    )
    return {server_id: box_id for server_id, box_id in rows if server_id is not None}


def view_servers(session: Session, servers: Iterable[Server]) -> list[ServerView]:
    servers = list(servers)
    boxes = live_box_ids(session, (s.id for s in servers))
    return [ServerView(s, boxes.get(s.id)) for s in servers]


def view_server(session: Session, server: Server) -> ServerView:
    return view_servers(session, [server])[0]


def _live_box_id(session: Session, server_id: uuid.UUID) -> uuid.UUID | None:
    return live_box_ids(session, [server_id]).get(server_id)
