"""Prometheus scrape endpoint (``Authorization: Bearer METRICS_TOKEN``, rate-limited)."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app import get_settings, telemetry
from app.db import db_session
from app.extensions import limiter
from app.security import require_metrics_token
from app.services.metrics import FleetCollector

bp = Blueprint("metrics", __name__)
_fleet = FleetCollector(db_session)


def registry() -> CollectorRegistry:
    """Every process's counters and histograms (multiprocess files) + the fleet gauges."""
    reg = telemetry.process_registry()
    reg.register(_fleet)
    return reg


def metrics_limit() -> str:
    """METRICS_RATELIMIT: per client address, for /metrics and /readyz?workers=1."""
    return get_settings().metrics_ratelimit


@bp.get("/metrics")
@limiter.limit(metrics_limit)
def metrics() -> Response:
    """Request and step counters, step and paid-to-running histograms (all processes),
    and fleet gauges from PostgreSQL (boxes by status, servers by state, degraded, ages)."""
    require_metrics_token()
    return Response(generate_latest(registry()), mimetype=CONTENT_TYPE_LATEST)
