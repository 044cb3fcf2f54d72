"""Retiring cloud servers (idle above the warm target, or operator-retired): nodes destroyed."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app import telemetry
from app.errors import PermanentError, TransientError
from app.integrations import cloud
from app.integrations.cloud import CloudRateLimitedError
from app.models import CloudProvider, Server, VibeBox
from app.services import jobs, pool
from app.services.capacity.context import CapacityContext, Progress, SweepReport, _note, _now

log = logging.getLogger(__name__)


def destroy_server(
    session: Session, server_id: uuid.UUID, ctx: CapacityContext, *, reason: str | None = None
) -> Progress:
    """``retiring`` -> node destroyed -> ``destroyed`` (idempotent)."""
    server = session.get(Server, server_id, populate_existing=True)
    if server is None or server.state != "retiring":
        session.commit()
        return Progress("skipped", detail=server.state if server else "gone")
    provider = session.get(CloudProvider, server.cloud_provider_id)
    node_id = server.cloud_node_id
    session.commit()
    if provider is not None:
        compute = ctx.compute_for(provider)
        try:
            if node_id is None:
                # A crash may have left a node we never recorded: find it by its tag.
                for node in compute.list_nodes(tag=cloud.server_tag(server_id)):
                    compute.destroy_node(node.id)
            else:
                compute.destroy_node(node_id)
        except CloudRateLimitedError as exc:
            return Progress(
                "retry", max(exc.retry_after, ctx.settings.cloud.poll_seconds), str(exc)
            )
        except (TransientError, PermanentError) as exc:
            _note(session, server_id, f"destroy: {exc}")
            return Progress("retry", ctx.settings.cloud.poll_seconds * 2, str(exc))
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    server.state = "destroyed"
    if reason is not None:
        server.last_error = reason[:2000]
    session.commit()
    telemetry.CLOUD_SERVERS.labels(
        provider=provider.name if provider else "?", event="destroyed"
    ).inc()
    log.info("capacity: server %s destroyed (node %s)", server_id, node_id)
    if reason is not None:
        # The box that counted on it asks again now (and gets a replacement).
        pool.wake_waiting_boxes(session, server)
        session.commit()
    return Progress("destroyed", detail=reason or "")


def retire_idle(session: Session, provider: CloudProvider, report: SweepReport) -> None:
    """Idle servers beyond the warm target (all of them when the provider is disabled), idle
    for ``idle_retire_seconds``, and servers an operator ``retired`` go ``retiring`` (their
    node is destroyed by a task)."""
    occupied = exists().where(VibeBox.server_id == Server.id, pool.LIVE_BOX)
    idle = list(
        session.scalars(
            select(Server)
            .where(
                Server.cloud_provider_id == provider.id,
                Server.state == "available",
                ~occupied,
            )
            .order_by(Server.idle_since.desc().nulls_last(), Server.id)
            .with_for_update(skip_locked=True, of=Server)
        )
    )
    # An operator retired or removed-with-history a cloud server: its node still costs money.
    for server in session.scalars(
        select(Server)
        .where(Server.cloud_provider_id == provider.id, Server.state == "retired", ~occupied)
        .with_for_update(skip_locked=True, of=Server)
    ):
        server.state = "retiring"
        jobs.enqueue_server(session, "capacity.retire_server", server.id)
        report.retiring.append(server.id)
        log.info("capacity: server %s retired by an operator: destroying its node", server.id)
    keep = provider.warm_target if provider.enabled else 0
    cutoff = _now() - timedelta(seconds=provider.idle_retire_seconds)
    for server in idle[keep:]:
        if server.idle_since is not None and server.idle_since > cutoff:
            continue
        server.state = "retiring"
        jobs.enqueue_server(session, "capacity.retire_server", server.id)
        report.retiring.append(server.id)
        log.info("capacity: server %s idle since %s: retiring", server.id, server.idle_since)
    session.flush()
