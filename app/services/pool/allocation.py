"""The pool allocation rule: which server a box gets, why none fits, waking waiters, release."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from sqlalchemy import Uuid, column, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.errors import NotFoundError
from app.models import Plan, Server, VibeBox
from app.services import jobs
from app.services.boxes.statuses import BoxStatus
from app.services.pool.queries import LIVE_BOX, _now, get_server

log = logging.getLogger(__name__)


# release_server leaves these alone: someone decided the server should not take a new box.
_STICKY_ON_RELEASE = frozenset({"draining", "unhealthy", "retired"})


def allocate_server(session: Session, box: VibeBox) -> Server | None:
    """Give ``box`` the smallest available server that fits its plan; None when none fits.

    One statement (one round trip), ``_ALLOCATE``: it locks the box row, reads its plan and
    region, takes the server with ``FOR UPDATE SKIP LOCKED`` (concurrent allocations never
    pick the same server and never wait on each other) and gives it to the box.

    Idempotent: a box that already holds a server gets that server back. Two deliveries of
    the same step allocate once: the second waits on the box row's lock and then sees the
    row as the first committed it (PostgreSQL re-reads a row it locked after waiting),
    holding a server, so it takes none.

    Regions: a box of region R takes only servers whose region is R; a box without a
    region (regions off, or a box from before them) takes any server. So with REGIONS set,
    a server without a region serves no new box: give it one (``vibebox pool update``).
    """
    row = session.execute(
        select(Server, _HELD_ID)
        .from_statement(_ALLOCATE)
        .params(box_id=box.id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"No plan {box.plan_id!r}", code="plan_not_found")
    server, held_id = row
    if held_id is not None:  # a redelivery: the box kept what it had
        set_committed_value(box, "server_id", held_id)
        return session.get(Server, held_id)
    if server is None:
        log.info(
            "pool: no available server fits box %s (plan %s, region %s)",
            box.id,
            box.plan_id,
            box.region or "any",
        )
        return None
    # The statement wrote the box row: tell the session what it holds now.
    set_committed_value(box, "server_id", server.id)
    session.expire(box, ["updated_at"])
    log.info("pool: server %s allocated to box %s", server.id, box.id)
    return server


# One statement allocates (keep in step with ``capacity_shortfall`` and ``LIVE_BOX``):
# - ``box`` locks the box row and reads its server, region and plan's resources. Another
#   allocation for the same box makes it wait; READ COMMITTED then returns the row as that
#   one committed it (holding a server), so nothing below takes a second one.
# - ``taken`` marks allocated the smallest fitting available server (only for a box without
#   one), chosen FOR UPDATE SKIP LOCKED: concurrent allocations never pick the same server
#   nor wait on each other; ``given`` hands it to the box.
# - The result: no row when the box does not exist; else one row with the server taken
#   (all NULL when none fits) and ``held_id``, the server the box already held (or NULL).
_HELD_ID = column("held_id", Uuid)


_SERVER_COLUMNS = [c.name for c in Server.__table__.columns]  # in the mapped order


_ALLOCATE = text(
    f"""
    WITH box AS MATERIALIZED (
        SELECT v.server_id, v.region, p.cpu_cores, p.ram_gb, p.disk_gb
        FROM vibeboxes AS v JOIN plans AS p ON p.id = v.plan_id
        WHERE v.id = :box_id
        FOR UPDATE OF v
    ),
    taken AS (
        UPDATE servers SET state = 'allocated', updated_at = now()
        WHERE servers.id = (
            SELECT s.id FROM servers AS s, box
            WHERE box.server_id IS NULL
              AND s.state = 'available'
              AND s.cpu_cores >= box.cpu_cores
              AND s.ram_gb >= box.ram_gb
              AND s.disk_gb >= box.disk_gb
              AND (box.region IS NULL OR s.region = box.region)
              AND NOT EXISTS (
                  SELECT 1 FROM vibeboxes AS v
                  WHERE v.server_id = s.id AND v.status != 'terminated'
              )
            ORDER BY s.cpu_cores, s.ram_gb, s.disk_gb, s.created_at, s.id
            LIMIT 1
            FOR UPDATE OF s SKIP LOCKED
        )
        RETURNING servers.*
    ),
    given AS (
        UPDATE vibeboxes SET server_id = taken.id, updated_at = now()
        FROM taken
        WHERE vibeboxes.id = :box_id
    )
    SELECT {", ".join(f"taken.{name}" for name in _SERVER_COLUMNS)}, box.server_id AS held_id
    FROM box LEFT JOIN taken ON true
    """  # noqa: S608 - the f-string inserts the model's own column names, nothing else
).columns(*Server.__table__.columns, _HELD_ID)


def _in_region(region: str | None) -> list[Any]:
    """Conditions on ``Server`` for a box of ``region`` (None: any server)."""
    return [] if region is None else [Server.region == region]


def capacity_shortfall(session: Session, plan_id: str, *, region: str | None = None) -> str:
    """Why no server can take a box of ``plan_id`` (in ``region``) now, in words the owner
    can read."""
    plan = session.get(Plan, plan_id)
    if plan is None:
        return "Waiting for a free server."
    needs = f"{plan.cpu_cores} CPU / {plan.ram_gb} GB RAM / {plan.disk_gb} GB disk"
    where = f" in region {region}" if region is not None else ""
    fitting = session.scalar(
        select(func.count())
        .select_from(Server)
        .where(
            Server.state.in_(("available", "allocated", "cleaning", "draining")),
            Server.cpu_cores >= plan.cpu_cores,
            Server.ram_gb >= plan.ram_gb,
            Server.disk_gb >= plan.disk_gb,
            *_in_region(region),
        )
    )
    if fitting:
        return (
            f"All {fitting} server(s){where} that fit the {plan.id} plan ({needs}) are busy; "
            "waiting for one to free up."
        )
    largest = session.execute(
        select(Server.cpu_cores, Server.ram_gb, Server.disk_gb)
        .where(Server.state == "available", *_in_region(region))
        .order_by(Server.cpu_cores.desc(), Server.ram_gb.desc(), Server.disk_gb.desc())
        .limit(1)
    ).first()
    have = (
        f"the largest free one has {largest[0]} CPU / {largest[1]} GB RAM / {largest[2]} GB disk"
        if largest
        else "no server is free"
    )
    return (
        f"No server in the pool{where} fits the {plan.id} plan (needs {needs}; {have}); "
        "waiting for one."
    )


def wake_waiting_boxes(session: Session, server: Server | None = None, *, count: int = 1) -> int:
    """``count`` servers became available (``server``, when one is named): the OLDEST boxes
    waiting for capacity that such a server fits (plan and region), at most ``count`` of
    them, try allocation at once (after commit) instead of waiting out their backoff. The
    others keep waiting: their backoff (up to CAPACITY_RETRY_MAX_SECONDS) is only the
    fallback, so a freed server costs one allocation attempt, not one per waiting box.

    A woken box gets ``next_retry_at = now``: the countdown it was waiting on is then
    recognised as stale and dropped (``engine.claim``). Boxes locked by an allocation in
    progress are skipped (they are trying already). Returns how many were woken."""
    if count < 1:
        return 0
    query = (
        select(VibeBox)
        .where(VibeBox.status == BoxStatus.WAITING_FOR_CAPACITY)
        .order_by(VibeBox.created_at, VibeBox.id)
        .limit(count)
        .with_for_update(skip_locked=True, of=VibeBox)
    )
    if server is not None:
        query = query.join(Plan, Plan.id == VibeBox.plan_id).where(
            Plan.cpu_cores <= server.cpu_cores,
            Plan.ram_gb <= server.ram_gb,
            Plan.disk_gb <= server.disk_gb,
            # A box of region R takes only servers of R; a box without one takes any.
            VibeBox.region.is_(None)
            if server.region is None
            else (VibeBox.region.is_(None)) | (VibeBox.region == server.region),
        )
    woken = list(session.scalars(query))
    now = _now()
    for box in woken:
        box.next_retry_at = now
        jobs.enqueue(session, box.id, "allocate_server")
    if woken:
        log.info("pool: woke %d waiting box(es), oldest first", len(woken))
    return len(woken)


def release_server(
    session: Session,
    server_id: uuid.UUID,
    *,
    to_state: Literal["available", "cleaning"] = "available",
) -> Server:
    """The server no longer hosts a box: back to ``to_state``.

    A live box still pointing at the server is detached (``server_id = None``), since a
    released server must be free for the next allocation. ``draining``, ``unhealthy`` and
    ``retired`` stay as they are: draining means "do not reallocate after release".
    """
    if to_state not in ("available", "cleaning"):
        raise ValueError(f"cannot release to {to_state!r}")
    server = get_server(session, server_id, for_update=True)
    for box in session.scalars(
        select(VibeBox).where(VibeBox.server_id == server.id, LIVE_BOX).with_for_update()
    ):
        log.warning("pool: releasing server %s detaches live box %s", server.id, box.id)
        box.server_id = None
    if server.state not in _STICKY_ON_RELEASE:
        server.state = to_state
        if to_state == "available":
            server.idle_since = _now()
            wake_waiting_boxes(session, server)
    session.flush()
    log.info("pool: server %s released (%s)", server.id, server.state)
    return server
