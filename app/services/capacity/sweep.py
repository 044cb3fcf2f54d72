"""The capacity beat: stuck servers resent, warm pools refilled, idle servers retired, orphans."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import PermanentError, TransientError
from app.models import CloudProvider, Server
from app.services import jobs
from app.services.capacity.context import IN_FLIGHT, CapacityContext, SweepReport, _now
from app.services.capacity.orphans import reconcile_orphans
from app.services.capacity.retire import retire_idle
from app.services.capacity.warm_pool import refill_warm_pool

log = logging.getLogger(__name__)


def sweep(session: Session, ctx: CapacityContext) -> SweepReport:
    """One capacity pass over every provider (beat, every CLOUD_SWEEP_INTERVAL_SECONDS)."""
    report = SweepReport()
    resend_stuck(session, ctx, report)
    for provider_id in list(session.scalars(select(CloudProvider.id).order_by(CloudProvider.name))):
        provider = session.get(CloudProvider, provider_id)
        assert provider is not None
        refill_warm_pool(session, provider, ctx, report)
        retire_idle(session, provider, report)
        session.commit()  # publishes the jobs
        provider = session.get(CloudProvider, provider_id)
        assert provider is not None
        try:
            reconcile_orphans(session, provider, ctx, report)
        except (TransientError, PermanentError) as exc:
            session.rollback()
            report.errors.append(f"{provider.name}: {exc}")
            log.warning("capacity: orphan check of %s failed: %s", provider.name, exc)
    session.commit()
    return report


def resend_stuck(session: Session, ctx: CapacityContext, report: SweepReport) -> None:
    """Servers in creating/bootstrapping/retiring that made no progress for
    STUCK_STEP_SECONDS (a killed worker, a lost message) are sent on again."""
    stalled = max(
        ctx.settings.cloud.poll_seconds * 4, ctx.settings.provisioning.stuck_after_seconds
    )
    cutoff = _now() - timedelta(seconds=stalled)
    rows = session.execute(
        select(Server.id, Server.state).where(
            Server.state.in_((*IN_FLIGHT, "retiring")), Server.updated_at < cutoff
        )
    ).all()
    for server_id, state in rows:
        task = "capacity.retire_server" if state == "retiring" else "capacity.bring_up"
        jobs.enqueue_server(session, task, server_id)
        report.resent.append(server_id)
    session.commit()
