"""Regions end to end: a real worker configured with two regions (REGIONS=intl,cn), the cn
region on its own Happy server (a second Happy double), real sshd boxes as servers of each
region. A box bought in cn lands on the cn server and its daemon registers on cn's Happy
server; an intl box uses the default Happy server. Checkout refuses a box over the quota."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import update

from app.config import RegionSettings
from app.db import db_session
from app.integrations.happy import HappyClient
from app.models import Server, VibeBox
from tests.e2e.conftest import Api
from tests.e2e.test_lifecycle import wait_until
from tests.support.happy_double import HappyDouble
from tests.support.sshd import BoxAccount


@pytest.fixture
def regional_stack(
    app, settings, live, celery_worker, worker_env, tmp_path_factory, monkeypatch
) -> Iterator[HappyDouble]:
    """The suite's worker is swapped for one with two regions while the test runs (both
    consume the same queues: only one may run), and the API gets the same settings."""
    from tests.support.worker import CeleryWorkerProcess

    with HappyDouble() as happy_cn:
        env = {
            **worker_env,
            "REGIONS": "intl,cn",
            "DEFAULT_REGION": "intl",
            "HAPPY_SERVER_URLS": f"cn={happy_cn.url}",
        }
        regions = RegionSettings(
            regions=("intl", "cn"),
            default_region="intl",
            happy_server_urls=(("cn", happy_cn.url),),
        )
        monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", replace(settings, regions=regions))
        celery_worker.stop()
        worker = CeleryWorkerProcess(
            tmp_path_factory.mktemp("celery-regions"), concurrency=4, extra_env=env
        )
        try:
            worker.start()
            yield happy_cn
        finally:
            worker.stop()
            celery_worker.start()


def _buy(user: Api, region: str | None = None, plan: str = "basic") -> Any:
    body = {"planId": plan, "billingCycle": "monthly", "provider": "dev"}
    if region is not None:
        body["region"] = region
    return user.post("/api/subscriptions/checkout", json=body)


def _pay(user: Api, started: dict[str, Any]) -> str:
    url = started["checkoutUrl"].split("://", 1)[1].split("/", 1)[1]
    assert user.client.post("/" + url).status_code == 303  # the dev page redirects after paying

    def applied() -> dict[str, Any] | None:  # the worker applies the recorded payment
        order = user.get(f"/api/orders/{started['orderId']}").get_json()
        return order if order["status"] == "paid" and order["vibeBoxId"] else None

    order = wait_until(applied, 60, "the payment applied")
    return str(order["vibeBoxId"])


def _public_key_of(box_id: str) -> tuple[bytes, dict[str, str]]:
    """The box user's Happy public key and its access.key (read on the machine)."""
    account = BoxAccount.of_box(box_id)
    assert account is not None
    key = json.loads(account.access_key_path.read_text())
    return bytes(SigningKey(base64.b64decode(key["secret"])).verify_key), key


def test_boxes_land_in_their_region_and_register_on_its_happy_server(
    regional_stack, make_user, add_to_pool, box_fleet, happy_double
):
    happy_cn = regional_stack
    cn_server_box, intl_server_box = box_fleet.new_box(), box_fleet.new_box()
    try:
        cn_server, intl_server = add_to_pool(cn_server_box, intl_server_box)
        session = db_session()
        for server_id, region in ((cn_server, "cn"), (intl_server, "intl")):
            session.execute(update(Server).where(Server.id == server_id).values(region=region))
        session.commit()
        db_session.remove()

        cn_user, intl_user = make_user(), make_user()
        cn_started = _buy(cn_user, "cn")
        assert cn_started.status_code == 201, cn_started.get_json()
        assert cn_started.get_json()["region"] == "cn"
        intl_started = _buy(intl_user)  # the default region
        assert intl_started.get_json()["region"] == "intl"
        cn_box = _pay(cn_user, cn_started.get_json())
        intl_box = _pay(intl_user, intl_started.get_json())

        cn_doc = cn_user.wait_for(cn_box, {"running", "error"}, timeout=90)
        intl_doc = intl_user.wait_for(intl_box, {"running", "error"}, timeout=90)
        assert cn_doc["status"] == "running", cn_doc
        assert intl_doc["status"] == "running", intl_doc
        assert (cn_doc["region"], intl_doc["region"]) == ("cn", "intl")

        session = db_session()
        assert session.get(VibeBox, uuid.UUID(cn_box)).server_id == cn_server
        assert session.get(VibeBox, uuid.UUID(intl_box)).server_id == intl_server
        db_session.remove()

        # The cn box's account and running machine are on cn's Happy server only, although
        # the cn server's login environment names the default Happy server.
        cn_key, cn_access = _public_key_of(cn_box)
        assert happy_double.account_for_public_key(cn_key) is None
        secret = base64.b64decode(cn_access["secret"])
        machines = HappyClient(happy_cn.url).list_machines(cn_access["token"], secret)
        assert [m.daemon_status for m in machines] == ["running"], machines
        intl_key, _ = _public_key_of(intl_box)
        assert happy_cn.account_for_public_key(intl_key) is None
        assert happy_double.machines_for_public_key(intl_key)

        # The connect URL carries the token cn's Happy server issued.
        connect = cn_user.post(f"/api/vibeboxes/{cn_box}/connect")
        assert connect.status_code == 200
        assert f"token={cn_access['token']}" in connect.get_json()["happyWebUrl"]
    finally:
        box_fleet.remove(cn_server_box)
        box_fleet.remove(intl_server_box)


def test_checkout_over_the_quota_is_409_and_the_provider_gets_nothing(
    make_user, payment_doubles, live
):
    user = make_user()
    session = db_session()
    for plan in ("basic", "pro", "enterprise"):
        session.add(VibeBox(user_id=user.user_id, plan_id=plan, status="running"))
    session.commit()
    db_session.remove()
    before = len(payment_doubles.stripe.sessions())
    response = user.post(
        "/api/subscriptions/checkout",
        json={"planId": "pro", "billingCycle": "monthly", "provider": "stripe"},
    )
    assert response.status_code == 409 and response.get_json()["code"] == "quota_exceeded"
    assert len(payment_doubles.stripe.sessions()) == before
