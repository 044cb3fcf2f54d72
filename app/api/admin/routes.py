"""Operator API. Every route here requires an admin token (blueprint-wide guard)."""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from app import get_settings
from app.api.admin.schemas import PageArgsSchema, UserPageSchema
from app.api.subscriptions.schemas import CancelRequestSchema, SubscriptionSchema
from app.api.vibeboxes.schemas import ProvisionRequestSchema, VibeBoxEnvelopeSchema
from app.db import db_session
from app.outage import enqueue_after_commit
from app.security import require_admin
from app.services import accounts, billing, provisioning

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


@blp.route("/provision")
class Provision(MethodView):
    @blp.arguments(ProvisionRequestSchema)
    @blp.response(202, VibeBoxEnvelopeSchema)
    @blp.alt_response(404, description="Unknown user or plan")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, data: dict[str, Any]):
        """Provision a VibeBox for a user without a payment (support, manual fixes)"""
        from workers.provisioning import enqueue_provisioning

        session = db_session()
        box = provisioning.create_vibebox(session, user_id=data["userId"], plan_id=data["planId"])
        db_session.commit()
        enqueue_after_commit(enqueue_provisioning, box.id, what=f"provisioning of box {box.id}")
        return {"vibeBox": provisioning.describe_box(session, get_settings(), box)}


@blp.route("/vibeboxes/<uuid:box_id>/retry")
class RetryBox(MethodView):
    @blp.response(202, VibeBoxEnvelopeSchema)
    @blp.alt_response(409, description="The box is not in error")
    @blp.doc(security=[{"bearerAuth": []}])
    def post(self, box_id: uuid.UUID):
        """Resume a failed VibeBox from its failed step"""
        from workers.provisioning import enqueue_provisioning

        session = db_session()
        box, start_at = provisioning.retry_failed_box(session, box_id)
        db_session.commit()
        enqueue_after_commit(enqueue_provisioning, box.id, start_at, what=f"retry of box {box.id}")
        box = provisioning.get_box(session, box_id)
        return {"vibeBox": provisioning.describe_box(session, get_settings(), box)}


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
        """Tear a box down now (stop daemon, wipe credentials, verify), e.g. after support
        cancels, or for a box provisioned by hand"""
        from workers.provisioning import enqueue_teardown

        session = db_session()
        provisioning.get_box(session, box_id)
        if provisioning.start_teardown(session, box_id, reason="terminated by an admin"):
            db_session.commit()
            enqueue_after_commit(enqueue_teardown, box_id, what=f"teardown of box {box_id}")
        else:
            db_session.commit()
        box = provisioning.get_box(session, box_id)
        return {"vibeBox": provisioning.describe_box(session, get_settings(), box)}
