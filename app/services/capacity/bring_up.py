"""Bringing a cloud server up: create (or find) its node, pin its host key, bootstrap, available."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import timedelta

from sqlalchemy.orm import Session

from app import telemetry
from app.errors import PermanentError, TransientError
from app.integrations import bootstrap, cloud, ssh
from app.integrations.cloud import CloudCompute, CloudRateLimitedError
from app.models import CloudProvider, Server
from app.services import jobs, pool
from app.services.boxes.engine import backoff
from app.services.capacity.budget import CREATE_FAILED
from app.services.capacity.context import IN_FLIGHT, CapacityContext, Progress, _note, _now
from app.services.capacity.retire import destroy_server

log = logging.getLogger(__name__)


def advance_server(session: Session, server_id: uuid.UUID, ctx: CapacityContext) -> Progress:
    """Move a ``creating`` / ``bootstrapping`` server as far as it goes now (idempotent)."""
    server = session.get(Server, server_id)
    if server is None or server.state not in IN_FLIGHT or server.cloud_provider_id is None:
        return Progress("skipped", detail=server.state if server else "gone")
    provider = session.get(CloudProvider, server.cloud_provider_id)
    assert provider is not None
    settings = ctx.settings
    deadline = server.created_at + timedelta(seconds=settings.cloud.boot_timeout_seconds)
    if _now() > deadline:
        return _give_up(session, server_id, ctx, "never became reachable")
    compute = ctx.compute_for(provider)
    provider_name = provider.name
    try:
        if server.state == "creating":
            reached = _create_and_locate(session, server_id, provider, compute, ctx)
            if reached is not None:
                return reached
        return _bootstrap(session, server_id, ctx)
    except CloudRateLimitedError as exc:
        session.rollback()
        _note(session, server_id, str(exc))
        return Progress("retry", max(exc.retry_after, settings.cloud.poll_seconds), str(exc))
    except PermanentError as exc:
        session.rollback()
        # The operator's detail (what the provider or driver objected to); the row and the
        # waiting boxes get the safe message.
        log.warning("capacity: server %s at %s: %s", server_id, provider_name, exc)
        server = session.get(Server, server_id)
        if server is not None and server.cloud_node_id is None:
            return _give_up(session, server_id, ctx, f"{CREATE_FAILED}{exc.safe_message}")
        return _give_up(session, server_id, ctx, f"failed: {exc.safe_message}")
    except TransientError as exc:
        session.rollback()
        failures = _note(session, server_id, str(exc))
        # Exponential backoff with jitter, from CLOUD_POLL_SECONDS up to a minute.
        delay = backoff(
            failures, settings.cloud.poll_seconds, max(60.0, settings.cloud.poll_seconds)
        )
        return Progress("retry", delay, str(exc))


def _create_and_locate(
    session: Session,
    server_id: uuid.UUID,
    provider: CloudProvider,
    compute: CloudCompute,
    ctx: CapacityContext,
) -> Progress | None:
    """Create (or find) the node and wait for its address; None once it has one."""
    server = session.get(Server, server_id)
    assert server is not None
    if provider.ssh_key_id is None and provider.driver != "linode":
        name, public = f"vibebox-{provider.name}", provider.ssh_public_key
        session.commit()
        registered = compute.register_key(name, public)
        provider = session.get(CloudProvider, provider.id)  # type: ignore[assignment]
        provider.ssh_key_id = registered
        session.commit()
        server = session.get(Server, server_id)
        assert server is not None
    node_id = server.cloud_node_id
    if node_id is None:
        size, image, key_id = server.cloud_size or "", provider.image, provider.ssh_key_id
        # cloud-init makes the login (root, or a passwordless sudoer) with our key: images
        # whose default user is not the login, and drivers without key pairs (ECS), need it.
        user_data = bootstrap.cloud_init_login_user_data(
            login_user=provider.login_user, authorized_keys=[provider.ssh_public_key]
        )
        session.commit()  # the row is committed in `creating` before the API call
        created = compute.create_node(
            name=cloud.node_name(server_id),
            size=size,
            image=image,
            ssh_key_id=key_id,
            tags=cloud.tags_for(server_id),
            user_data=user_data,
        )
        server = session.get(Server, server_id, populate_existing=True)
        assert server is not None
        server.cloud_node_id = node_id = created.id
        session.commit()
        log.info("capacity: server %s is node %s at %s", server_id, created.id, provider.name)
    session.commit()
    node = compute.get_node(node_id)
    if node is None:
        return _give_up(session, server_id, ctx, "the node vanished at the provider")
    if not node.public_ips:
        server = session.get(Server, server_id, populate_existing=True)
        if server is not None:
            server.updated_at = _now()  # progress: the sweep resends only stalled servers
        session.commit()
        return Progress("retry", ctx.settings.cloud.poll_seconds, f"node {node.id} {node.state}")
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    if server.state == "creating":
        server.host = node.public_ips[0]
        server.state = "bootstrapping"
        session.commit()
        log.info("capacity: server %s has address %s", server_id, server.host)
    return None


def _bootstrap(session: Session, server_id: uuid.UUID, ctx: CapacityContext) -> Progress:
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    settings = ctx.settings
    timeout = settings.provisioning.ssh_connect_timeout_seconds
    if not server.host_key_fingerprint:
        host, port = server.host, server.ssh_port
        session.commit()
        # First contact: trust on first use (we created this node; the API told us where).
        fingerprint = ssh.fetch_host_key_fingerprint(host, port, timeout=timeout)
        server = session.get(Server, server_id, populate_existing=True)
        assert server is not None
        server.host_key_fingerprint = fingerprint
        session.commit()
        log.info("capacity: server %s host key pinned (first contact): %s", server_id, fingerprint)
    target = pool.ssh_target_for(server, settings.encryption_key)
    session.commit()
    ctx.bootstrap(target, settings.happy_url_for(server.region))
    server = session.get(Server, server_id, populate_existing=True)
    if server is None or server.state != "bootstrapping":
        session.commit()
        return Progress("skipped", detail="state changed meanwhile")
    server.state = "available"
    server.idle_since = server.last_checked_at = _now()
    server.last_error = None
    server.consecutive_failures = 0
    provider = session.get(CloudProvider, server.cloud_provider_id)
    pool.wake_waiting_boxes(session, server)
    session.commit()
    telemetry.CLOUD_SERVERS.labels(
        provider=provider.name if provider else "?", event="available"
    ).inc()
    log.info("capacity: server %s available", server_id)
    return Progress("available")


def _give_up(session: Session, server_id: uuid.UUID, ctx: CapacityContext, reason: str) -> Progress:
    """Destroy the node (if any) and the server row's hopes; waiting boxes ask again (and so
    get a replacement)."""
    server = session.get(Server, server_id, populate_existing=True)
    assert server is not None
    log.warning("capacity: giving up server %s: %s", server_id, reason)
    server.state = "retiring"
    server.last_error = reason[:2000]
    session.commit()
    progress = destroy_server(session, server_id, ctx, reason=reason)
    if progress.outcome != "destroyed":
        # The provider did not let us destroy it yet: the retire task keeps trying (and the
        # sweep resends it while the server stays `retiring`).
        jobs.enqueue_server(session, "capacity.retire_server", server_id)
        session.commit()
        return replace(progress, outcome="skipped", detail=f"retiring: {reason}")
    return replace(progress, detail=reason)
