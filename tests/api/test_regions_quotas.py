"""Regions and quotas through the API: checkout, plans, the status document, admin."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from sqlalchemy import func, select, update

from app.config import RegionSettings
from app.models import Order, Plan, VibeBox
from tests.api.test_admin_guard import token_for
from tests.factories import AdminFactory, UserFactory
from tests.pool_fixtures import make_box

REGIONS = RegionSettings(regions=("intl", "cn"), default_region="intl")


@pytest.fixture
def regional(app, settings, monkeypatch):
    """The app with REGIONS=intl,cn (DEFAULT_REGION intl)."""
    patched = replace(settings, regions=REGIONS)
    monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", patched)
    return patched


@pytest.fixture
def user(app):
    found = UserFactory()
    return found, token_for(app, found)


def start(client, headers, **body):
    payload = {"planId": "basic", "billingCycle": "monthly", "provider": "dev"}
    payload.update(body)
    return client.post("/api/subscriptions/checkout", json=payload, headers=headers)


def test_plans_list_their_regions_default_and_box_limit(client, regional, session):
    session.execute(update(Plan).where(Plan.id == "pro").values(regions=["cn"]))
    session.commit()
    plans = {p["id"]: p for p in client.get("/api/subscriptions/plans").get_json()["plans"]}
    assert plans["basic"]["regions"] == ["intl", "cn"]
    assert plans["basic"]["defaultRegion"] == "intl"
    assert plans["pro"]["regions"] == ["cn"] and plans["pro"]["defaultRegion"] == "cn"
    assert plans["basic"]["maxLiveBoxesPerUser"] == 3


def test_plans_without_regions_offer_none(client):
    plans = client.get("/api/subscriptions/plans").get_json()["plans"]
    assert all(p["regions"] == [] and p["defaultRegion"] is None for p in plans)


def test_checkout_default_and_explicit_region_reach_the_order(client, regional, user):
    _, headers = user
    default = start(client, headers)
    assert default.status_code == 201, default.get_json()
    assert default.get_json()["region"] == "intl"
    explicit = start(client, headers, planId="pro", region="cn")
    assert explicit.status_code == 201 and explicit.get_json()["region"] == "cn"
    order = client.get(f"/api/orders/{explicit.get_json()['orderId']}", headers=headers)
    assert order.get_json()["region"] == "cn"


def test_checkout_in_a_region_not_offered_is_422_naming_the_offered_ones(
    client, regional, user, session
):
    _, headers = user
    session.execute(update(Plan).where(Plan.id == "pro").values(regions=["intl"]))
    session.commit()
    response = start(client, headers, planId="pro", region="cn")
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "region_unavailable"
    assert body["offeredRegions"] == ["intl"]
    assert "region" in body["errors"] and "offered: intl" in body["message"]


def test_quota_is_409_before_the_provider_sees_an_order(client, user, session, payment_doubles):
    owner, headers = user
    for plan in ("basic", "pro", "enterprise"):
        make_box(session, plan_id=plan, user_id=owner.id, status="running")
    session.commit()
    alipay = payment_doubles.alipay
    before = alipay.calls("alipay.trade.precreate")
    response = start(client, headers, planId="pro", provider="alipay")
    assert response.status_code == 409, response.get_json()
    body = response.get_json()
    assert body["code"] == "quota_exceeded"
    assert body["message"].startswith("You have 3 live boxes; the limit for the Pro plan is 3.")
    assert (body["limit"], body["liveBoxes"], body["pendingCheckouts"]) == (3, 3, 0)
    assert alipay.calls("alipay.trade.precreate") == before
    count = select(func.count()).select_from(Order).where(Order.user_id == owner.id)
    assert session.scalar(count) == 0


def test_the_status_document_and_the_admin_list_say_the_region(client, app, user, session):
    owner, headers = user
    cn = make_box(session, user_id=owner.id, region="cn")
    intl = make_box(session, user_id=owner.id, region="intl")
    session.commit()
    doc = client.get(f"/api/vibeboxes/{cn.id}", headers=headers).get_json()["vibeBox"]
    assert doc["region"] == "cn"
    admin = token_for(app, AdminFactory())
    page = client.get("/api/admin/vibeboxes?region=cn", headers=admin).get_json()
    assert [i["id"] for i in page["items"]] == [str(cn.id)] and page["total"] == 1
    assert page["items"][0]["region"] == "cn"
    one = client.get(f"/api/admin/vibeboxes/{intl.id}", headers=admin).get_json()["vibeBox"]
    assert one["region"] == "intl"


def test_admin_provision_takes_a_region(client, app, regional, session):
    admin = token_for(app, AdminFactory())
    owner = UserFactory()
    session.commit()
    body = {"userId": str(owner.id), "planId": "basic"}
    response = client.post("/api/admin/provision", json={**body, "region": "cn"}, headers=admin)
    assert response.status_code == 202, response.get_json()
    box_id = uuid.UUID(response.get_json()["vibeBox"]["id"])
    assert response.get_json()["vibeBox"]["region"] == "cn"
    assert session.get(VibeBox, box_id).region == "cn"
    default = client.post("/api/admin/provision", json=body, headers=admin)
    assert default.get_json()["vibeBox"]["region"] == "intl"
    refused = client.post("/api/admin/provision", json={**body, "region": "mars"}, headers=admin)
    assert refused.status_code == 422 and refused.get_json()["code"] == "region_unavailable"
