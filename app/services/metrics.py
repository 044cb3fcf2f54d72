"""Prometheus metrics derived from PostgreSQL at scrape time.

The system of record is the database, so fleet gauges are read from it: any web process
answers with the same numbers, whichever worker did the work and however often processes
restart. Counters and histograms of what processes did (requests, step outcomes, the
paid-to-running time) are in ``app.telemetry``; ``/metrics`` serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Server, VibeBox
from app.models.server import SERVER_STATES
from app.models.vibebox import VIBEBOX_STATUSES
from app.services.boxes.statuses import PROVISIONING_STATUSES, BoxStatus
from app.timeutil import utcnow


def fleet_metrics(session: Session) -> list[Metric]:
    boxes = GaugeMetricFamily("vibebox_boxes", "VibeBoxes by status", labels=["status"])
    counts = dict(
        session.execute(select(VibeBox.status, func.count()).group_by(VibeBox.status)).all()
    )
    for status in VIBEBOX_STATUSES:
        boxes.add_metric([status], counts.get(status, 0))

    servers = GaugeMetricFamily("vibebox_servers", "Pool servers by state", labels=["state"])
    states = dict(session.execute(select(Server.state, func.count()).group_by(Server.state)).all())
    for state in SERVER_STATES:
        servers.add_metric([state], states.get(state, 0))

    degraded = GaugeMetricFamily(
        "vibebox_degraded_boxes",
        "Boxes marked degraded (their daemon or server needs attention), not terminated",
    )
    degraded.add_metric(
        [],
        session.scalar(
            select(func.count())
            .select_from(VibeBox)
            .where(VibeBox.degraded_since.is_not(None), VibeBox.status != BoxStatus.TERMINATED)
        )
        or 0,
    )

    waiting = session.scalar(
        select(func.min(VibeBox.created_at)).where(VibeBox.status == BoxStatus.WAITING_FOR_CAPACITY)
    )
    waiting_age = GaugeMetricFamily(
        "vibebox_oldest_waiting_for_capacity_age_seconds",
        "Age (since creation) of the oldest box waiting for capacity (0 when none)",
    )
    waiting_age.add_metric([], (utcnow() - waiting).total_seconds() if waiting else 0.0)

    oldest = session.scalar(
        select(func.min(VibeBox.created_at)).where(
            VibeBox.status.in_([str(s) for s in PROVISIONING_STATUSES])
        )
    )
    age = GaugeMetricFamily(
        "vibebox_oldest_in_progress_box_age_seconds",
        "Age of the oldest box still being provisioned (0 when none)",
    )
    age.add_metric([], (utcnow() - oldest).total_seconds() if oldest else 0.0)
    return [boxes, servers, degraded, waiting_age, age]


class FleetCollector(Collector):
    """Adapter so the metrics can be registered in a prometheus_client registry."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        yield from fleet_metrics(self.session_factory())
