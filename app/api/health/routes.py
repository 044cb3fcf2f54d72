"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from app import get_settings
from app.api.metrics.routes import metrics_limit
from app.db import db_session
from app.extensions import get_redis, limiter
from app.security import require_metrics_token
from app.services import readiness

blp = Blueprint("health", __name__, description="Probes")


class StatusSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class LinksSchema(Schema):
    docs = fields.String(required=True, metadata={"description": "Swagger UI"})
    openapi = fields.String(required=True, metadata={"description": "The OpenAPI document"})
    healthz = fields.String(required=True)
    readyz = fields.String(required=True)
    flower = fields.String(
        allow_none=True,
        metadata={"description": "Flower (FLOWER_URL; in development derived from FLOWER_PORT)"},
    )


class IndexSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    links = fields.Nested(LinksSchema, required=True)


@blp.route("/")
class Index(MethodView):
    @blp.response(200, IndexSchema)
    def get(self):
        """Where things are: API docs, the OpenAPI document, probes and Flower"""
        base = request.host_url.rstrip("/")
        return {
            "name": "VibeBox API",
            "version": "v1",
            "links": {
                "docs": f"{base}/docs",
                "openapi": f"{base}/openapi.json",
                "healthz": f"{base}/healthz",
                "readyz": f"{base}/readyz",
                "flower": get_settings().flower_url,
            },
        }


@blp.route("/healthz")
class Healthz(MethodView):
    decorators = [limiter.exempt]

    @blp.response(200, StatusSchema)
    def get(self):
        """The process is alive"""
        return {"status": "ok"}


def _wants_workers() -> bool:
    return request.args.get("workers") in {"1", "true"}


@blp.route("/readyz")
class Readyz(MethodView):
    # Plain /readyz is cheap and unlimited (load balancers poll it); the worker round trip
    # sends a task through the broker, so it takes METRICS_TOKEN and METRICS_RATELIMIT.
    decorators = [limiter.limit(metrics_limit, exempt_when=lambda: not _wants_workers())]

    @blp.response(200, StatusSchema)
    @blp.alt_response(401, description="`?workers=1` without a valid METRICS_TOKEN")
    @blp.alt_response(429, description="`?workers=1` over METRICS_RATELIMIT")
    @blp.alt_response(503, schema=StatusSchema, description="A dependency is not ready")
    def get(self):
        """PostgreSQL and Redis reachable, migrations at head; `?workers=1` (with
        `Authorization: Bearer <METRICS_TOKEN>`) also round-trips a task through the broker
        to a worker"""
        workers = _wants_workers()
        if workers:
            require_metrics_token()
        result = readiness.Readiness()
        result.checks["database"] = readiness.check_database(db_session())
        result.checks["redis"] = readiness.check_redis(get_redis())
        if workers and result.checks["redis"] != "ok":
            result.checks["worker"] = "not checked: the broker (Redis) is unreachable"
        elif workers:
            result.checks["worker"] = readiness.check_worker_roundtrip(timeout=5.0)
        body = {"status": "ok" if result.ok else "unavailable", "checks": result.checks}
        return body, (200 if result.ok else 503)
