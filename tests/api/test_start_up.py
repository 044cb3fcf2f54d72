"""Start-up frictions of issue 11: `GET /` links, cookie lifetime, the dev checkout page's
redirect and already-paid view, the status-poll rate limit, gunicorn's gthread settings."""

from __future__ import annotations

import uuid
from dataclasses import replace
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import func, select

from app.config import ConfigError, FlowerSettings, Settings
from app.models import Order, PaymentEvent, VibeBox
from tests.api.test_admin_guard import token_for
from tests.factories import UserFactory
from tests.pool_fixtures import make_box


def test_root_answers_json_links_to_docs_openapi_probes_and_flower(client, app, monkeypatch):
    settings = app.config["VIBEBOX_SETTINGS"]
    monkeypatch.setitem(
        app.config,
        "VIBEBOX_SETTINGS",
        replace(settings, flower=FlowerSettings(url="http://flower.test:5555/")),
    )
    response = client.get("/")
    assert response.status_code == 200 and response.is_json
    links = response.get_json()["links"]
    assert links["flower"] == "http://flower.test:5555/"
    for name, path in (
        ("docs", "/docs"),
        ("openapi", "/openapi.json"),
        ("healthz", "/healthz"),
        ("readyz", "/readyz"),
    ):
        assert urlparse(links[name]).path == path
        assert client.get(path).status_code == 200, name


def test_flower_link_is_derived_from_flower_port_in_development_only(monkeypatch):
    monkeypatch.setenv("FLOWER_PORT", "5999")
    monkeypatch.delenv("FLOWER_URL", raising=False)
    monkeypatch.setenv("VIBEBOX_ENV", "development")
    assert Settings.from_env().flower_url == "http://127.0.0.1:5999/"
    monkeypatch.setenv("VIBEBOX_ENV", "testing")
    assert Settings.from_env().flower_url is None
    monkeypatch.setenv("FLOWER_URL", "https://ops.example.com/flower")
    assert Settings.from_env().flower_url == "https://ops.example.com/flower/"


def test_session_cookie_lives_exactly_as_long_as_the_token(client, app):
    lifetime = int(app.config["VIBEBOX_SETTINGS"].jwt_access_expires.total_seconds())
    name = f"ck{uuid.uuid4().hex[:10]}"
    response = client.post(
        "/api/auth/register",
        json={"email": f"{name}@example.com", "username": name, "password": "cookie-Pass-2024!x"},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    cookies = SimpleCookie()
    for header in response.headers.getlist("Set-Cookie"):
        cookies.load(header)
    assert cookies["access_token_cookie"]["max-age"] == str(lifetime)
    assert cookies["csrf_access_token"]["max-age"] == str(lifetime)
    assert lifetime < 365 * 24 * 3600


def _checkout(client, app):
    user = UserFactory()
    headers = token_for(app, user)
    body = client.post(
        "/api/subscriptions/checkout",
        json={"planId": "basic", "billingCycle": "monthly", "provider": "dev"},
        headers=headers,
    ).get_json()
    url = urlparse(body["checkoutUrl"])
    return body["orderId"], f"{url.path}?{url.query}"


def test_dev_checkout_redirects_to_the_return_url_then_shows_already_paid(client, app, session):
    order_id, page_url = _checkout(client, app)
    page = client.get(page_url)
    assert b"<button" in page.data and b"Already paid" not in page.data

    paid = client.post(page_url)
    assert paid.status_code == 303
    location = urlparse(paid.headers["Location"])
    return_url = urlparse(app.config["VIBEBOX_SETTINGS"].checkout_return_url)
    assert (location.netloc, location.path) == (return_url.netloc, return_url.path)
    assert parse_qs(location.query) == {"checkout": ["success"], "orderId": [order_id]}
    assert session.get(Order, uuid.UUID(order_id)).status == "paid"

    again = client.get(page_url)
    assert again.status_code == 200
    assert b"Already paid" in again.data and b"<button" not in again.data

    # A second payment (a reload, a double click) changes nothing.
    second = client.post(page_url)
    assert second.status_code == 303
    events = select(func.count()).select_from(PaymentEvent)
    assert session.scalar(events) == 1
    boxes = select(func.count()).select_from(VibeBox).where(VibeBox.order_id == uuid.UUID(order_id))
    assert session.scalar(boxes) == 1


def test_polling_a_box_more_often_than_the_default_limit_is_not_429(client, app, session):
    user = UserFactory()
    box = make_box(session, status="provisioning", user_id=user.id)
    session.commit()
    headers = token_for(app, user)
    default = int(app.config["VIBEBOX_SETTINGS"].ratelimit_default.split()[0])
    statuses = {
        client.get(f"/api/vibeboxes/{box.id}", headers=headers).status_code
        for _ in range(default + 20)
    }
    assert statuses == {200}
    assert client.get("/api/vibeboxes", headers=headers).status_code == 200


def test_status_polls_have_their_own_limit(client, app, session, monkeypatch):
    settings = app.config["VIBEBOX_SETTINGS"]
    monkeypatch.setitem(
        app.config, "VIBEBOX_SETTINGS", replace(settings, status_ratelimit="3 per minute")
    )
    user = UserFactory()
    box = make_box(session, status="provisioning", user_id=user.id)
    session.commit()
    headers = token_for(app, user)
    codes = [client.get(f"/api/vibeboxes/{box.id}", headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_gunicorn_runs_gthread_workers_with_web_threads(monkeypatch):
    import importlib

    import app.gunicorn_config as gunicorn_config

    monkeypatch.setenv("WEB_THREADS", "6")
    reloaded = importlib.reload(gunicorn_config)
    try:
        assert reloaded.worker_class == "gthread"
        assert reloaded.threads == 6
    finally:
        monkeypatch.delenv("WEB_THREADS")
        importlib.reload(gunicorn_config)


@pytest.mark.parametrize(("threads", "waiters"), [("4", "4"), ("4", "9"), ("4", "-1")])
def test_long_polls_must_leave_threads_for_other_requests(monkeypatch, threads, waiters):
    monkeypatch.setenv("WEB_THREADS", threads)
    monkeypatch.setenv("WEB_MAX_WAITERS", waiters)
    with pytest.raises(ConfigError, match="WEB_MAX_WAITERS"):
        Settings.from_env()


def test_max_waiters_defaults_to_half_the_threads(monkeypatch):
    monkeypatch.setenv("WEB_THREADS", "10")
    monkeypatch.delenv("WEB_MAX_WAITERS", raising=False)
    assert Settings.from_env().web_max_waiters == 5


def test_web_process_pools_one_database_connection_per_thread(monkeypatch, settings):
    import dataclasses

    from app import create_app
    from app import db as app_db
    from app.config import WebSettings

    settings = dataclasses.replace(settings, web=WebSettings(threads=12))
    monkeypatch.setattr(app_db, "_engines", {})  # this app makes its own engine
    monkeypatch.setitem(app_db.SessionFactory.kw, "bind", app_db.SessionFactory.kw.get("bind"))
    create_app(settings=settings)
    engine = app_db._engines[settings.database_url]
    try:
        assert engine.pool.size() == 12  # type: ignore[attr-defined]
    finally:
        engine.dispose()
