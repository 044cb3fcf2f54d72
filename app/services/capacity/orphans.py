"""Orphan nodes: nodes with our tag and no live row are adopted, destroyed or reported."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from app import telemetry
from app.integrations import cloud
from app.models import CloudProvider, Server
from app.services.capacity.context import CapacityContext, SweepReport

log = logging.getLogger(__name__)


def reconcile_orphans(
    session: Session, provider: CloudProvider, ctx: CapacityContext, report: SweepReport
) -> None:
    """Nodes with our tag: ours (a live row with that node id), adoptable (a ``creating``
    row without a node id: a crash between create and commit), another provider's (a live
    row of a provider sharing the cloud account: left to that provider's sweep), or
    orphans."""
    name, policy = provider.name, ctx.settings.cloud.orphan_policy
    compute = ctx.compute_for(provider)
    session.commit()
    nodes = compute.list_nodes(tag=cloud.TAG)
    for node in nodes:
        row = _server_of(session, node.server_id)
        if row is not None and row.cloud_provider_id not in (None, provider.id):
            if row.state != "destroyed":
                # Another provider on the same cloud account (one per warm size, say) lists
                # the same nodes: that node is its to keep, adopt or destroy, not ours.
                continue
        elif row is not None and row.cloud_provider_id == provider.id:
            if row.cloud_node_id == node.id and row.state != "destroyed":
                continue
            if row.cloud_node_id is None and row.state == "creating":
                row.cloud_node_id = node.id
                session.commit()
                report.adopted.append(node.id)
                telemetry.CLOUD_ORPHANS.labels(provider=name, action="adopted").inc()
                log.warning(
                    "capacity: node %s at %s adopted by creating server %s", node.id, name, row.id
                )
                continue
        session.commit()
        report.orphans.append(node.id)
        if policy == "destroy":
            compute.destroy_node(node.id)
            action = "destroyed"
        else:
            action = "reported"
        telemetry.CLOUD_ORPHANS.labels(provider=name, action=action).inc()
        log.warning(
            "capacity: orphan node %s (%s) at %s, no live server row: %s",
            node.id,
            node.name,
            name,
            action,
        )


def _server_of(session: Session, server_id: str | None) -> Server | None:
    if server_id is None:
        return None
    try:
        return session.get(Server, uuid.UUID(server_id))
    except ValueError:
        return None
