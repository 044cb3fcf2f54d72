"""A user's VibeBoxes: status polling (with ETag), connect URL (seed 5.3)."""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from app import get_settings
from app.api.vibeboxes.schemas import (
    ConnectResponseSchema,
    ControlRequestSchema,
    ControlResponseSchema,
    VibeBoxEnvelopeSchema,
    VibeBoxListSchema,
)
from app.db import db_session
from app.services import control, provisioning

blp = Blueprint("vibeboxes", __name__, url_prefix="/api/vibeboxes", description="VibeBoxes")
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# Running boxes' documents carry the connect URL: never in shared caches; revalidate by ETag.
PRIVATE = {"Cache-Control": "private, no-cache"}


@blp.route("")
class VibeBoxes(MethodView):
    decorators = [jwt_required()]

    @blp.etag
    @blp.response(200, VibeBoxListSchema)
    @blp.doc(security=SECURITY)
    def get(self):
        """List my VibeBoxes with their status"""
        session, settings = db_session(), get_settings()
        boxes = provisioning.list_boxes(session, current_user.id)
        documents = [provisioning.describe_box(session, settings, b) for b in boxes]
        return {"vibeBoxes": documents}, 200, PRIVATE


@blp.route("/<uuid:box_id>")
class VibeBoxDetail(MethodView):
    decorators = [jwt_required()]

    @blp.etag
    @blp.response(200, VibeBoxEnvelopeSchema)
    @blp.alt_response(404, description="No such box (or not yours)")
    @blp.doc(security=SECURITY)
    def get(self, box_id: uuid.UUID):
        """One VibeBox: status, step, progress, timeline; connection info once running.

        Send `If-None-Match` with the last ETag to get 304 while nothing changed."""
        session = db_session()
        box = provisioning.get_box(session, box_id, owner_id=current_user.id)
        document = {"vibeBox": provisioning.describe_box(session, get_settings(), box)}
        return document, 200, PRIVATE


@blp.route("/<uuid:box_id>/connect")
class VibeBoxConnect(MethodView):
    decorators = [jwt_required()]

    @blp.response(200, ConnectResponseSchema)
    @blp.alt_response(409, description="The box is not running")
    @blp.doc(security=SECURITY)
    def post(self, box_id: uuid.UUID):
        """The Happy web URL of a running box (it carries credentials: keep it private)"""
        session = db_session()
        box = provisioning.get_box(session, box_id, owner_id=current_user.id)
        url = provisioning.connect_url(session, get_settings(), box)
        return {"happyWebUrl": url}, 200, {"Cache-Control": "no-store"}


@blp.route("/<uuid:box_id>/control")
class VibeBoxControl(MethodView):
    decorators = [jwt_required()]

    @blp.arguments(ControlRequestSchema)
    @blp.response(202, ControlResponseSchema)
    @blp.alt_response(409, description="Not allowed in the current status, or busy")
    @blp.doc(security=SECURITY)
    def post(self, data: dict[str, Any], box_id: uuid.UUID):
        """Start, stop or restart a box; poll the box until it is running or stopped"""
        from workers.control import enqueue_action

        session = db_session()
        box = control.request_action(
            session, box_id, owner_id=current_user.id, action=data["action"]
        )
        db_session.commit()
        enqueue_action(box.id)
        box = provisioning.get_box(session, box_id)
        document = provisioning.describe_box(session, get_settings(), box)
        return {"status": box.status, "vibeBox": document}
