"""HTTP layer: thin flask-smorest resources over app.services."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask
from flask_smorest import Api

# Swagger UI assets served by this app (from the flask-swagger-ui wheel), so /docs works
# without reaching a CDN.
SWAGGER_UI_ASSETS = Path(flask_swagger_ui.__file__).parent / "dist"
SWAGGER_UI_URL = "/docs/assets/"


def register_blueprints(app: Flask, api: Api) -> None:
    from app.api.admin.routes import blp as admin_blp
    from app.api.auth.routes import blp as auth_blp
    from app.api.cloud_providers.routes import blp as cloud_providers_blp
    from app.api.health.routes import blp as health_blp
    from app.api.metrics.routes import bp as metrics_bp
    from app.api.orders.routes import blp as orders_blp
    from app.api.servers.routes import blp as servers_blp
    from app.api.subscriptions.routes import blp as subscriptions_blp
    from app.api.subscriptions.routes import dev_checkout_bp
    from app.api.vibeboxes.routes import blp as vibeboxes_blp

    app.register_blueprint(metrics_bp)
    app.register_blueprint(dev_checkout_bp)
    app.register_blueprint(
        Blueprint(
            "swagger_ui_assets",
            __name__,
            static_folder=str(SWAGGER_UI_ASSETS),
            static_url_path=SWAGGER_UI_URL.rstrip("/"),
        )
    )
    for blp in (
        health_blp,
        auth_blp,
        vibeboxes_blp,
        subscriptions_blp,
        orders_blp,
        admin_blp,
        servers_blp,
        cloud_providers_blp,
    ):
        api.register_blueprint(blp)
