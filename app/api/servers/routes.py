"""Operator API for the server pool. Every route requires an admin token."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from app import get_settings
from app.api.servers.schemas import (
    ServerAddedSchema,
    ServerCreateSchema,
    ServerListArgsSchema,
    ServerPageSchema,
    ServerSchema,
    ServerUpdateSchema,
)
from app.db import db_session
from app.security import require_admin
from app.services import pool

blp = Blueprint(
    "admin_servers",
    __name__,
    url_prefix="/api/admin/servers",
    description="Server pool (operators only)",
)
blp.before_request(require_admin)

_ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}]


@blp.route("")
class Servers(MethodView):
    @blp.arguments(ServerListArgsSchema, location="query", unknown=RAISE)
    @blp.response(200, ServerPageSchema)
    @blp.doc(security=_ADMIN)
    def get(self, args: dict[str, Any]):
        """List pool servers, oldest first, optionally filtered by state (paged)"""
        session = db_session()
        servers, total = pool.page_servers(
            session, args.get("state"), limit=args["limit"], offset=args["offset"]
        )
        return {"items": pool.view_servers(session, servers), "total": total}

    @blp.arguments(ServerCreateSchema)
    @blp.response(201, ServerAddedSchema)
    @blp.alt_response(409, description="host_key_mismatch or server_exists")
    @blp.alt_response(
        422,
        description="Invalid fields, server_host_not_allowed (POOL_ALLOWED_NETWORKS), "
        "server_unreachable, ssh_auth_failed or server_check_failed (the preflight: root or "
        "sudo -n, `happy` on the login PATH, a route to the Happy server; the message names "
        "the fix)",
    )
    @blp.doc(security=_ADMIN)
    def post(self, data: dict[str, Any]):
        """Add a server: pins its host key, proves the credentials with one SSH login and
        checks that boxes can work on it (skipChecks: true skips that preflight)"""
        session, settings = db_session(), get_settings()
        skip_checks = data.pop("skip_checks", False)
        admission = pool.admit_server(
            session,
            pool.ServerSpec(**data),
            encryption_key=settings.encryption_key,
            allowed_networks=settings.limits.pool_allowed_networks,
            happy_server_url=settings.happy_server_url,
            skip_checks=skip_checks,
        )
        session.commit()
        view = pool.view_server(session, admission.server)
        return replace(view, checks=admission.checks)


@blp.route("/<uuid:server_id>")
class ServerById(MethodView):
    @blp.response(200, ServerSchema)
    @blp.doc(security=_ADMIN)
    def get(self, server_id: uuid.UUID):
        """Show one server"""
        session = db_session()
        return pool.view_server(session, pool.get_server(session, server_id))

    @blp.arguments(ServerUpdateSchema)
    @blp.response(200, ServerSchema)
    @blp.alt_response(409, description="server_allocated or invalid_state_transition")
    @blp.doc(security=_ADMIN)
    def patch(self, changes: dict[str, Any], server_id: uuid.UUID):
        """Change a server's label, region, resources or state (drain, retire, restore)"""
        session = db_session()
        server = pool.update_server(session, server_id, **changes)
        session.commit()
        return pool.view_server(session, server)

    @blp.response(204)
    @blp.alt_response(409, description="server_allocated: a live box is on it")
    @blp.doc(security=_ADMIN)
    def delete(self, server_id: uuid.UUID):
        """Remove a server (retired instead of deleted when boxes used it)"""
        session = db_session()
        pool.remove_server(session, server_id)
        session.commit()
