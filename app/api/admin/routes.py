"""Operator API. Every route here requires an admin token (blueprint-wide guard)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from app.api.admin.schemas import PageArgsSchema, UserPageSchema
from app.db import db_session
from app.security import require_admin
from app.services import accounts

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Operators only")
blp.before_request(require_admin)


@blp.route("/users")
class Users(MethodView):
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, UserPageSchema)
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, args: dict[str, Any]):
        """List users (paged)"""
        users, total = accounts.list_users(db_session(), limit=args["limit"], offset=args["offset"])
        return {"items": users, "total": total}
