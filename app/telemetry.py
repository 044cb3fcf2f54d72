"""Prometheus counters and histograms recorded by the processes that do the work.

Every process (gunicorn workers, Celery pool processes, the CLI) records into
prometheus_client's *multiprocess* files when ``PROMETHEUS_MULTIPROC_DIR`` is set (``make
run`` sets it to ``var/prometheus`` and empties it at start); ``/metrics`` merges the files
of all processes, so a counter never goes back or vanishes when a task retries in another
process. Without the variable (a single process) they live in the default registry.

prometheus_client picks the storage when it is first imported: the variable must be in the
environment before that (``make run``, the Procfile and the test fixtures set it early).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.config import prometheus_multiproc_dir

HTTP_REQUESTS = Counter(
    "vibebox_http_requests",
    "HTTP requests answered by the API, by Flask endpoint, method and status",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "vibebox_http_request_duration_seconds",
    "Time to answer an HTTP request, by Flask endpoint and method",
    ["endpoint", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STEP_OUTCOMES = Counter(
    "vibebox_box_step_outcomes",
    "Box step runs by step and outcome (succeeded, retry, waiting, moved, failed, stopped, done)",
    ["step", "outcome"],
)
STEP_DURATION = Histogram(
    "vibebox_box_step_duration_seconds",
    "Duration of one box step run, by step",
    ["step"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
PAID_TO_RUNNING = Histogram(
    "vibebox_paid_to_running_seconds",
    "From a box's creation (payment) to the end of its provision workflow (running)",
    buckets=(10, 30, 60, 90, 120, 180, 300, 600, 900, 1800, 3600, 7200, 21600),
)
CLOUD_ORPHANS = Counter(
    "vibebox_cloud_orphans",
    "Cloud instances with our tag and no live server row, by provider and action "
    "(destroyed, reported, adopted)",
    ["provider", "action"],
)
CLOUD_SERVERS = Counter(
    "vibebox_cloud_servers",
    "Cloud servers by provider and event (requested, available, destroyed, failed)",
    ["provider", "event"],
)


def observe_step(step: str, outcome: str, seconds: float) -> None:
    STEP_OUTCOMES.labels(step=step, outcome=outcome).inc()
    STEP_DURATION.labels(step=step).observe(max(seconds, 0.0))


_PENDING = "vibebox.telemetry"


def observe_after_commit(session: Session, histogram: Histogram, value: float) -> None:
    """Observe ``value`` once ``session`` commits (nothing when it rolls back)."""
    session.info.setdefault(_PENDING, []).append((histogram, value))


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for histogram, value in session.info.pop(_PENDING, None) or ():
        histogram.observe(value)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


class _Default(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def process_registry() -> CollectorRegistry:
    """A registry with the counters/histograms of every process (multiprocess mode) or of
    this process (single-process mode)."""
    registry = CollectorRegistry(auto_describe=False)
    path = prometheus_multiproc_dir()
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_Default())
    return registry


def init_app(app: Any) -> None:
    """Count every request by endpoint name (not the raw path) and time it."""
    from flask import g, request

    @app.before_request
    def _start_timer() -> None:
        g._vibebox_started = time.perf_counter()

    @app.after_request
    def _count(response: Any) -> Any:
        started = g.pop("_vibebox_started", None)
        endpoint = request.endpoint or "unmatched"
        HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        if started is not None:
            HTTP_LATENCY.labels(endpoint, request.method).observe(time.perf_counter() - started)
        return response
