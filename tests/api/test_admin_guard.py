from __future__ import annotations

from flask_jwt_extended import create_access_token

from tests.factories import AdminFactory, UserFactory


def token_for(app, user) -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {create_access_token(identity=user)}"}


def test_admin_routes_require_a_token(client):
    response = client.get("/api/admin/users")
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"


def test_admin_routes_refuse_regular_users_with_403(app, client):
    user = UserFactory()
    response = client.get("/api/admin/users", headers=token_for(app, user))
    assert response.status_code == 403
    assert response.get_json()["code"] == "admin_required"


def test_admin_lists_users_paged(app, client):
    admin = AdminFactory()
    UserFactory.create_batch(3)
    response = client.get("/api/admin/users?limit=2", headers=token_for(app, admin))
    assert response.status_code == 200
    body = response.get_json()
    assert body["total"] == 4
    assert len(body["items"]) == 2
    assert all("passwordHash" not in u and "password_hash" not in u for u in body["items"])


def test_admin_paging_arguments_are_validated(app, client):
    admin = AdminFactory()
    response = client.get("/api/admin/users?limit=0", headers=token_for(app, admin))
    assert response.status_code == 422
    assert "limit" in response.get_json()["errors"]


def test_options_on_admin_routes_is_not_a_500(client):
    response = client.open("/api/admin/users", method="OPTIONS")
    assert response.status_code == 200
    assert "GET" in response.headers["Allow"]
    # ...and it discloses nothing: the real methods still need an admin.
    assert client.get("/api/admin/users").status_code == 401
