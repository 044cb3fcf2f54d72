"""VibeBox API: ``create_app()`` builds the Flask app (config -> extensions -> blueprints ->
errors -> CLI)."""

from __future__ import annotations

from typing import Any

from flask import Flask

from app.config import Settings


def create_app(overrides: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Application factory used by gunicorn (``app:create_app()``), the CLI and tests."""
    from app import logging as app_logging
    from app.api import register_blueprints
    from app.api.errors import register_error_handlers
    from app.api.request_guard import init_request_guard
    from app.cli import register_cli
    from app.db import POOL_SIZE, db_session, init_db
    from app.extensions import api, jwt, limiter
    from app.security import register_jwt_callbacks

    settings = settings or Settings.from_env()
    app_logging.configure(settings.log.level, settings.log.format)

    app = Flask(__name__)
    trust_proxies(app, settings.trusted_proxies)
    app.config.update(settings.flask_config())
    app.config["RATELIMIT_AUTH"] = settings.ratelimit_auth
    if overrides:
        app.config.update(overrides)

    # One pooled connection per gunicorn thread (WEB_THREADS): with fewer, busy threads
    # take overflow connections that are closed on return and reopened by the next request.
    init_db(settings.database_url, pool_size=max(POOL_SIZE, settings.web.threads))
    from app.integrations.payments.registry import build_registry

    app.extensions["vibebox.payments"] = build_registry(settings)
    from app.services.boxes import box_watch

    box_watch.configure_publisher(settings.redis_url)
    # Started on the first long poll, in the process (gunicorn worker) that serves it.
    app.extensions["vibebox.box_watcher"] = box_watch.BoxWatcher(
        settings.redis_url,
        max_waiters=settings.web_max_waiters,
        recheck_seconds=settings.long_poll_recheck_seconds,
    )

    @app.teardown_appcontext
    def _remove_session(exc: BaseException | None) -> None:
        db_session.remove()

    # first: every request gets an id and is counted, whatever a later hook refuses
    app_logging.init_app(app)
    from app import telemetry

    telemetry.init_app(app)
    api.init_app(app)
    jwt.init_app(app)
    limiter.init_app(app)
    init_request_guard(app)  # after the limiter: a rate-limited client is refused first
    register_jwt_callbacks(jwt)
    register_blueprints(app, api)
    register_error_handlers(app)
    register_cli(app)
    return app


def trust_proxies(app: Flask, hops: int) -> None:
    """Behind ``hops`` reverse proxies, trust exactly that many X-Forwarded-* hops: the
    per-IP rate limits then see the client, and a client cannot spoof its address."""
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )


def get_settings() -> Settings:
    """The settings of the current Flask app."""
    from flask import current_app

    settings: Settings = current_app.config["VIBEBOX_SETTINGS"]
    return settings
