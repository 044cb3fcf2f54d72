from __future__ import annotations

from sqlalchemy import text


def test_healthz_is_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_database_redis_and_migrations(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_readyz_is_503_when_migrations_are_behind(client, session):
    session.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("migrations not at head")


def test_readyz_is_503_when_redis_is_unreachable(client, monkeypatch):
    import redis

    from app.api.health import routes

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    monkeypatch.setattr(routes, "get_redis", lambda: dead)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("unreachable")


def test_openapi_and_swagger_ui_are_served_locally(client):
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.get_json()["paths"]
    assert {"/api/auth/register", "/api/auth/login", "/healthz", "/readyz"} <= set(paths)
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert b"/docs/assets/swagger-ui-bundle.js" in docs.data
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.data) > 100_000


def test_unknown_route_and_wrong_method_use_the_common_error_shape(client):
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.get_json()["code"] == "not_found"
    wrong = client.delete("/api/auth/login")
    assert wrong.status_code == 405
    assert wrong.get_json()["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


def test_behind_a_trusted_proxy_the_rate_limit_keys_on_the_forwarded_client(
    app, client, monkeypatch
):
    from app import trust_proxies

    monkeypatch.setattr(app, "wsgi_app", app.wsgi_app)  # restored after the test
    trust_proxies(app, 1)
    for i in range(3):
        response = client.get("/api/auth/session", headers={"X-Forwarded-For": f"198.51.100.{i}"})
        assert response.status_code == 200
        # Each forwarded client has its own full allowance, not the proxy's shared one.
        assert response.headers["X-RateLimit-Remaining"] == "99"


def test_without_trusted_proxies_forwarded_headers_are_ignored(client):
    remaining = [
        client.get("/api/auth/session", headers={"X-Forwarded-For": f"198.51.100.{i}"}).headers[
            "X-RateLimit-Remaining"
        ]
        for i in range(3)
    ]
    assert remaining == ["99", "98", "97"]  # one client: the socket peer
