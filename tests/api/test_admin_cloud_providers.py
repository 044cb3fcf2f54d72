"""Admin API for cloud providers: real PostgreSQL; credentials sealed and never returned."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from app.crypto import DecryptionError, decrypt_str
from app.models import CloudProvider
from app.services.capacity import cloud_providers
from tests.api.test_admin_guard import token_for
from tests.factories import AdminFactory, UserFactory

TOKEN = "dop_v1_" + "ab12" * 16


@pytest.fixture
def admin(app):
    return token_for(app, AdminFactory())


def body(**extra):
    doc = {
        "name": "do-nyc",
        "driver": "digitalocean",
        "region": "nyc1",
        "image": "ubuntu-24-04-x64",
        "planSizes": {"basic": "s-2vcpu-4gb"},
        "sizePrices": {"s-2vcpu-4gb": 2400},
        "credentials": {"key": TOKEN},
        "warmTarget": 1,
        "maxServers": 3,
        "monthlyBudgetCents": 10000,
    }
    doc.update(extra)
    return doc


def test_add_seals_the_credentials_and_never_returns_them(client, admin, session, settings):
    response = client.post("/api/admin/cloud-providers", json=body(), headers=admin)
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert TOKEN not in json.dumps(doc) and "credentials" not in doc
    assert doc["sshPublicKey"].startswith("ssh-ed25519 ")
    assert (doc["driver"], doc["region"], doc["warmTarget"], doc["servers"]) == (
        "digitalocean",
        "nyc1",
        1,
        0,
    )
    assert doc["bootSeconds"] == 60  # the driver's expected boot time
    sealed, key = session.execute(
        text(
            "SELECT credentials_encrypted, ssh_private_key_encrypted FROM cloud_providers "
            "WHERE id = :id"
        ),
        {"id": doc["id"]},
    ).one()
    assert TOKEN.encode() not in bytes(sealed) and b"PRIVATE KEY" not in bytes(key)
    provider = session.get(CloudProvider, doc["id"])
    assert cloud_providers.credentials_of(provider, settings.encryption_key) == {"key": TOKEN}
    # Bound to its row: the sealed value does not open as another provider's.
    with pytest.raises(DecryptionError):
        decrypt_str(settings.encryption_key, bytes(sealed), aad="cloud-provider:other:credentials")


def test_list_get_update_and_remove(client, admin, session):
    created = client.post("/api/admin/cloud-providers", json=body(), headers=admin).get_json()
    client.post(
        "/api/admin/cloud-providers", json=body(name="do-ams", region="ams3"), headers=admin
    )
    listed = client.get("/api/admin/cloud-providers?limit=1", headers=admin).get_json()
    assert listed["total"] == 2 and [p["name"] for p in listed["items"]] == ["do-ams"]

    by_name = client.get("/api/admin/cloud-providers/do-nyc", headers=admin)
    assert by_name.status_code == 200 and by_name.get_json()["id"] == created["id"]

    patched = client.patch(
        f"/api/admin/cloud-providers/{created['id']}",
        json={"warmTarget": 0, "enabled": False, "credentials": {"key": "new-token"}},
        headers=admin,
    )
    assert patched.status_code == 200, patched.get_json()
    assert (patched.get_json()["warmTarget"], patched.get_json()["enabled"]) == (0, False)
    assert "new-token" not in patched.get_data(as_text=True)

    gone = client.delete(f"/api/admin/cloud-providers/{created['id']}", headers=admin)
    assert gone.status_code == 204
    assert (
        client.get(f"/api/admin/cloud-providers/{created['id']}", headers=admin).status_code == 404
    )


def test_duplicate_name_is_409_and_bad_input_is_422(client, admin):
    assert client.post("/api/admin/cloud-providers", json=body(), headers=admin).status_code == 201
    again = client.post("/api/admin/cloud-providers", json=body(), headers=admin)
    assert again.status_code == 409 and again.get_json()["code"] == "cloud_provider_exists"
    bad = client.post(
        "/api/admin/cloud-providers",
        json=body(name="x", driver="gcp", planSizes={}, sshPort=70000),
        headers=admin,
    )
    assert bad.status_code == 422
    assert {"driver", "sshPort"} <= set(bad.get_json()["errors"])


def test_non_admins_are_refused(client, app):
    user = token_for(app, UserFactory())
    assert client.get("/api/admin/cloud-providers", headers=user).status_code == 403
