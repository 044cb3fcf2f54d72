"""Orders: what the app polls after paying."""

from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from app.api.orders.schemas import OrderSchema
from app.api.vibeboxes.routes import status_limit
from app.db import db_session
from app.extensions import limiter
from app.services import billing

blp = Blueprint("orders", __name__, url_prefix="/api/orders", description="Orders")


@blp.route("/<uuid:order_id>")
class OrderDetail(MethodView):
    decorators = [limiter.limit(status_limit, override_defaults=True), jwt_required()]

    @blp.etag
    @blp.response(200, OrderSchema)
    @blp.alt_response(404, description="No such order (or not yours)")
    @blp.doc(security=[{"bearerAuth": []}])
    def get(self, order_id: uuid.UUID):
        """One of my orders: status, amount, provider and the box once created"""
        return billing.get_order(db_session(), order_id, owner_id=current_user.id)
