"""What capacity work runs with (settings, a cloud connection, the bootstrap) and what a run
came to (Progress, SweepReport); the states and helpers every part shares.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.config import BootstrapSettings, Settings
from app.integrations import bootstrap, cloud
from app.integrations.cloud import CloudCompute
from app.integrations.ssh import SSHTarget
from app.models import CloudProvider, Server
from app.services.capacity import cloud_providers

ComputeFor = Callable[[CloudProvider], CloudCompute]


IN_FLIGHT = ("creating", "bootstrapping")


def _now() -> datetime:
    return datetime.now(UTC)


def default_compute_for(settings: Settings) -> ComputeFor:
    def compute_for(provider: CloudProvider) -> CloudCompute:
        account = cloud_providers.account_of(
            provider, settings.encryption_key, timeout=settings.cloud.api_timeout_seconds
        )
        return cloud.connect(account)

    return compute_for


@dataclass(frozen=True)
class Progress:
    """What one :func:`advance_server` run came to."""

    outcome: str  # "available" | "retry" | "destroyed" | "skipped"
    delay: float = 0.0
    detail: str = ""


def bootstrap_cloud_server(
    server: SSHTarget, happy_server_url: str, *, timeout: float = 30.0
) -> None:
    """Make a freshly created cloud server ready for boxes, and verify it: the Fabric
    bootstrap (``app/integrations/bootstrap.py``: node, happy-coder, ``HAPPY_SERVER_URL``
    of the server's region in the login environment, then the admission checks). The host
    key is pinned already (first contact). Raises TransientError (retried until the boot
    timeout) or PermanentError (the server is given up and replaced).
    """
    bootstrap.bootstrap_host(
        server,
        happy_server_url=happy_server_url,
        settings=BootstrapSettings.from_env(),
        connect_timeout=timeout,
    )


Bootstrap = Callable[[SSHTarget, str], None]  # (target, its Happy server URL)


@dataclass
class CapacityContext:
    settings: Settings
    compute_for: ComputeFor
    bootstrap: Bootstrap = field(default=bootstrap_cloud_server)


@dataclass
class SweepReport:
    resent: list[uuid.UUID] = field(default_factory=list)
    created: list[uuid.UUID] = field(default_factory=list)
    retiring: list[uuid.UUID] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _note(session: Session, server_id: uuid.UUID, error: str) -> int:
    """Record a transient fault; returns how many in a row (for the backoff)."""
    server = session.get(Server, server_id)
    failures = 0
    if server is not None:
        server.last_error = error[:2000]
        server.consecutive_failures += 1
        failures = server.consecutive_failures
    session.commit()
    return failures
