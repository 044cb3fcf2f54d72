"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from app.db import db_session
from app.extensions import get_redis, limiter
from app.services import health

blp = Blueprint("health", __name__, description="Probes")


class StatusSchema(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String())


@blp.route("/healthz")
class Healthz(MethodView):
    decorators = [limiter.exempt]

    @blp.response(200, StatusSchema)
    def get(self):
        """The process is alive"""
        return {"status": "ok"}


@blp.route("/readyz")
class Readyz(MethodView):
    decorators = [limiter.exempt]

    @blp.response(200, StatusSchema)
    @blp.alt_response(503, schema=StatusSchema, description="A dependency is not ready")
    def get(self):
        """PostgreSQL and Redis reachable, migrations at head; `?workers=1` also round-trips a
        task through the broker to a worker"""
        result = health.Readiness()
        result.checks["database"] = health.check_database(db_session())
        result.checks["redis"] = health.check_redis(get_redis())
        if request.args.get("workers") in {"1", "true"}:
            from workers.maintenance import check_worker_roundtrip

            result.checks["worker"] = check_worker_roundtrip(timeout=5.0)
        body = {"status": "ok" if result.ok else "unavailable", "checks": result.checks}
        return body, (200 if result.ok else 503)
