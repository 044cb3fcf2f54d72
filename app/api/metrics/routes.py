"""Prometheus scrape endpoint."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.db import db_session
from app.extensions import limiter
from app.services.metrics import FleetCollector

bp = Blueprint("metrics", __name__)
_registry = CollectorRegistry(auto_describe=False)
_registry.register(FleetCollector(db_session))


@bp.get("/metrics")
@limiter.exempt
def metrics() -> Response:
    """Fleet gauges for Prometheus (boxes by status, servers by state, failures)."""
    return Response(generate_latest(_registry), mimetype=CONTENT_TYPE_LATEST)
