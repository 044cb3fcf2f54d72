"""Operator API. Every route here requires an admin token (blueprint-wide guard)."""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from flask_jwt_extended import current_user
from flask_smorest import Blueprint
from marshmallow import RAISE

from app import get_settings
from app.api.admin.schemas import (
    AdminBoxEnvelopeSchema,
    AdminBoxPageSchema,
    BoxListArgsSchema,
    PageArgsSchema,
    UserPageSchema,
)
from app.api.subscriptions.schemas import CancelRequestSchema, SubscriptionSchema
from app.api.vibeboxes.schemas import ProvisionRequestSchema, VibeBoxEnvelopeSchema
from app.db import db_session
from app.security import require_admin
from app.services import accounts, billing
from app.services.boxes import admin_boxes, engine, provisioning, status_document
from app.services.pool import regions

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Operators only")
blp.before_request(require_admin)


@blp.route("/users")
class Users(MethodView):
    @blp.arguments(PageArgsSchema, location="query", unknown=RAISE)
    @blp.response(200, UserPageSchema)
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, args: dict[str, Any]):
        """List users (paged)"""
        users, total = accounts.list_users(db_session(), limit=args["limit"], offset=args["offset"])
        return {"items": users, "total": total}


@blp.route("/vibeboxes")
class Boxes(MethodView):
    @blp.arguments(BoxListArgsSchema, location="query", unknown=RAISE)
    @blp.response(200, AdminBoxPageSchema)
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, args: dict[str, Any]):
        """List VibeBoxes, newest first (filters: status, degraded, waiting, userId,
        serverId, planId, region; paged)"""
        boxes, total = admin_boxes.list_boxes(
            db_session(),
            admin_boxes.BoxFilter(
                status=args.get("status"),
                degraded=args.get("degraded"),
                waiting=args.get("waiting"),
                user_id=args.get("userId"),
                server_id=args.get("serverId"),
                plan_id=args.get("planId"),
                region=args.get("region"),
            ),
            limit=args["limit"],
            offset=args["offset"],
        )
        return {"items": boxes, "total": total}


@blp.route("/vibeboxes/<uuid:box_id>")
class BoxById(MethodView):
    @blp.response(200, AdminBoxEnvelopeSchema)
    @blp.alt_response(404, description="vibebox_not_found")
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, box_id: uuid.UUID):
        """One VibeBox: timeline, events, degraded reason, and its user, server and unix user"""
        session = db_session()
        box = provisioning.get_box(session, box_id)
        return {"vibeBox": admin_boxes.describe(session, get_settings(), box)}


@blp.route("/provision")
class Provision(MethodView):
    @blp.arguments(ProvisionRequestSchema)
    @blp.response(202, VibeBoxEnvelopeSchema)
    @blp.alt_response(404, description="Unknown user or plan")
    @blp.alt_response(422, description="`region_unavailable`: not offered for the plan")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, data: dict[str, Any]):
        """Provision a VibeBox for a user without a payment (support, manual fixes); in
        `region` (default: the plan's). Not subject to the user's box quota."""
        session, settings = db_session(), get_settings()
        box = provisioning.create_vibebox(
            session,
            user_id=data["userId"],
            plan_id=data["planId"],
            region=regions.resolve_region(
                settings.regions, provisioning.get_plan(session, data["planId"]), data.get("region")
            ),
        )
        db_session.commit()
        return {"vibeBox": status_document.describe_box(session, get_settings(), box)}


@blp.route("/vibeboxes/<uuid:box_id>/retry")
class RetryBox(MethodView):
    @blp.response(202, VibeBoxEnvelopeSchema)
    @blp.alt_response(409, description="The box is not in error")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, box_id: uuid.UUID):
        """Resume a failed VibeBox: the workflow that failed, from its failed step"""
        session = db_session()
        engine.retry_failed_box(session, box_id, by=f"admin {current_user.username}")
        db_session.commit()
        box = provisioning.get_box(session, box_id)
        return {"vibeBox": status_document.describe_box(session, get_settings(), box)}


@blp.route("/subscriptions/<uuid:subscription_id>/cancel")
class CancelSubscription(MethodView):
    @blp.arguments(CancelRequestSchema)
    @blp.response(200, SubscriptionSchema)
    @blp.alt_response(404, description="No such subscription")
    @blp.alt_response(409, description="Already canceled or expired")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, data: dict[str, Any], subscription_id: uuid.UUID):
        """Cancel a subscription now or at the end of its period (also at the provider)"""
        from app.api.subscriptions.routes import payment_registry

        session = db_session()
        sub = billing.get_subscription(session, subscription_id)
        subscription = billing.cancel_subscription(
            session,
            subscription_id,
            at_period_end=data["atPeriodEnd"],
            provider=payment_registry().get(sub.payment_provider),
        )
        db_session.commit()
        return subscription


@blp.route("/vibeboxes/<uuid:box_id>/terminate")
class TerminateBox(MethodView):
    @blp.response(202, VibeBoxEnvelopeSchema)
    @blp.alt_response(404, description="No such box")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, box_id: uuid.UUID):
        """Tear a box down now (forced: a renewal never cancels it; the subscription is left
        as it is — cancel it separately), e.g. after support cancels, or for a box
        provisioned by hand"""
        session = db_session()
        provisioning.get_box(session, box_id)
        engine.start_teardown(
            session,
            box_id,
            reason=f"terminated by admin {current_user.username}",
            cancellable=False,
        )
        db_session.commit()
        box = provisioning.get_box(session, box_id)
        return {"vibeBox": status_document.describe_box(session, get_settings(), box)}
