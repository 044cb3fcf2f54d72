"""Operator API for cloud providers. Every route requires an admin token."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from app import get_settings
from app.api.cloud_providers.schemas import (
    CloudProviderCreateSchema,
    CloudProviderListArgsSchema,
    CloudProviderPageSchema,
    CloudProviderSchema,
    CloudProviderUpdateSchema,
)
from app.db import db_session
from app.security import require_admin
from app.services.capacity import cloud_providers

blp = Blueprint(
    "admin_cloud_providers",
    __name__,
    url_prefix="/api/admin/cloud-providers",
    description="Cloud providers the capacity service creates servers at (operators only)",
)
blp.before_request(require_admin)

_ADMIN: list[dict[str, list[str]]] = [{"bearerAuth": []}]


@blp.route("")
class CloudProviders(MethodView):
    @blp.arguments(CloudProviderListArgsSchema, location="query", unknown=RAISE)
    @blp.response(200, CloudProviderPageSchema)
    @blp.doc(security=_ADMIN)
    def get(self, args: dict[str, Any]):
        """List cloud providers by name (paged; credentials are never returned)"""
        items, total = cloud_providers.page_providers(
            db_session(), limit=args["limit"], offset=args["offset"]
        )
        return {"items": items, "total": total}

    @blp.arguments(CloudProviderCreateSchema)
    @blp.response(201, CloudProviderSchema)
    @blp.alt_response(409, description="cloud_provider_exists")
    @blp.doc(security=_ADMIN)
    def post(self, data: dict[str, Any]):
        """Add a cloud provider (credentials sealed at rest; an SSH key pair is generated)"""
        session = db_session()
        credentials = data.pop("credentials")
        provider = cloud_providers.add_provider(
            session,
            encryption_key=get_settings().encryption_key,
            credentials=credentials,
            **data,
        )
        session.commit()
        return cloud_providers.view(session, [provider])[0]


@blp.route("/<provider_id>")
class CloudProviderById(MethodView):
    @blp.response(200, CloudProviderSchema)
    @blp.doc(security=_ADMIN)
    def get(self, provider_id: str):
        """Show one cloud provider (by id or name)"""
        session = db_session()
        return cloud_providers.view(session, [cloud_providers.get_provider(session, provider_id)])[
            0
        ]

    @blp.arguments(CloudProviderUpdateSchema)
    @blp.response(200, CloudProviderSchema)
    @blp.doc(security=_ADMIN)
    def patch(self, changes: dict[str, Any], provider_id: str):
        """Change a cloud provider (sizes, warm target, limits, credentials, enabled)"""
        session = db_session()
        provider = cloud_providers.update_provider(
            session, provider_id, encryption_key=get_settings().encryption_key, **changes
        )
        session.commit()
        return cloud_providers.view(session, [provider])[0]

    @blp.response(204)
    @blp.alt_response(409, description="cloud_provider_in_use: servers of it still exist")
    @blp.doc(security=_ADMIN)
    def delete(self, provider_id: str):
        """Remove a cloud provider none of whose servers exists any more"""
        session = db_session()
        cloud_providers.remove_provider(session, provider_id)
        session.commit()
