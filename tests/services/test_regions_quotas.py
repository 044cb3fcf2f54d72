"""Regions (where a plan is sold, where a box runs, which Happy server it uses) and the
per-user box quota checked at checkout before any provider call."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.api.orders.schemas import OrderSchema
from app.config import ConfigError, RegionSettings, Settings
from app.errors import ConflictError, ValidationError
from app.integrations.happy import HappyClient
from app.models import (
    HappyAccount,
    HappyServerToken,
    Order,
    Plan,
    Server,
    Subscription,
    User,
    VibeBox,
)
from app.services import billing, pool
from app.services.billing import CheckoutPolicy
from app.services.boxes import happy_accounts
from app.services.boxes.steps import CreateHappyAccount, StepContext
from app.services.pool import regions
from tests.factories import UserFactory
from tests.pool_fixtures import make_box, make_server
from tests.services.test_billing import FakeProvider, paid
from tests.support.happy_double import HappyDouble

TWO_REGIONS = RegionSettings(regions=("intl", "cn"), default_region="intl")


def policy(regions_: RegionSettings = TWO_REGIONS, **kw) -> CheckoutPolicy:
    return CheckoutPolicy(regions=regions_, **kw)


def checkout(session, user, *, plan="basic", region=None, provider=None, pol=None):
    provider = provider or FakeProvider()
    order, _ = billing.start_checkout(
        session,
        user=user,
        plan_id=plan,
        billing_cycle="monthly",
        provider=provider,
        notify_url="http://api/webhook",
        return_url="http://app/",
        region=region,
        policy=pol or policy(),
    )
    session.commit()
    return order


def set_plan(session: Session, plan_id: str, **values) -> None:
    session.execute(update(Plan).where(Plan.id == plan_id).values(**values))
    session.flush()
    session.expire_all()


def buy(session, user, **kw) -> VibeBox:
    """Check out and pay: the box the paid order created."""
    order = checkout(session, user, **kw)
    outcome = billing.record_event(session, paid(order, event_id=f"evt_{uuid.uuid4().hex}"))
    session.commit()
    (box_id,) = outcome.boxes_to_provision
    return session.get(VibeBox, box_id)


# --- configuration ------------------------------------------------------------------------


def test_regions_are_off_by_default(monkeypatch):
    for name in ("REGIONS", "DEFAULT_REGION", "HAPPY_SERVER_URLS"):
        monkeypatch.delenv(name, raising=False)
    assert RegionSettings.from_env() == RegionSettings()
    assert not RegionSettings().enabled


def test_regions_parse_with_the_first_as_default_and_a_happy_server_per_region(monkeypatch):
    monkeypatch.setenv("REGIONS", "Intl, cn")
    monkeypatch.delenv("DEFAULT_REGION", raising=False)
    monkeypatch.setenv("HAPPY_SERVER_URLS", "cn=https://happy.example.cn/")
    found = RegionSettings.from_env()
    assert found.regions == ("intl", "cn") and found.default_region == "intl"
    assert found.configured_happy_url("cn") == "https://happy.example.cn"
    assert found.configured_happy_url("intl") is None
    assert found.configured_happy_url(None) is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DEFAULT_REGION": "cn"}, "REGIONS is not"),
        ({"REGIONS": "intl", "DEFAULT_REGION": "cn"}, "not one of REGIONS"),
        ({"REGIONS": "intl", "HAPPY_SERVER_URLS": "cn=https://x"}, "not in REGIONS"),
        ({"REGIONS": "intl", "HAPPY_SERVER_URLS": "intl"}, "REGION=URL"),
        ({"REGIONS": "intl", "HAPPY_SERVER_URLS": "intl=ftp://x"}, "REGION=URL"),
        ({"REGIONS": "eu west!"}, "not a region name"),
    ],
)
def test_bad_region_settings_stop_start_up(monkeypatch, env, says):
    for name in ("REGIONS", "DEFAULT_REGION", "HAPPY_SERVER_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=says):
        RegionSettings.from_env()


def test_each_region_uses_its_happy_server_else_the_default(settings: Settings):
    s = replace(settings, regions=replace(TWO_REGIONS, happy_server_urls=(("cn", "https://h.cn"),)))
    assert s.happy_url_for("cn") == "https://h.cn" and s.happy_realm("cn") == "https://h.cn"
    assert s.happy_url_for("intl") == s.happy_server_url and s.happy_realm("intl") is None
    assert s.happy_url_for(None) == s.happy_server_url and s.happy_realm(None) is None


# --- checkout and the region of orders and boxes ------------------------------------------


def test_without_regions_orders_and_boxes_have_none_and_a_region_is_refused(session):
    user = UserFactory()
    box = buy(session, user, pol=policy(RegionSettings()))
    assert box.region is None
    provider = FakeProvider()
    with pytest.raises(ValidationError) as caught:
        checkout(
            session, UserFactory(), region="cn", provider=provider, pol=policy(RegionSettings())
        )
    assert caught.value.code == "region_unavailable"
    assert caught.value.extra == {"offeredRegions": []}
    assert provider.requests == []


def test_checkout_region_defaults_to_the_plans_then_the_configured_default(session):
    assert checkout(session, UserFactory()).region == "intl"
    set_plan(session, "basic", default_region="cn")
    assert checkout(session, UserFactory()).region == "cn"
    # A plan default that is not offered falls back to DEFAULT_REGION.
    set_plan(session, "basic", default_region="mars")
    assert checkout(session, UserFactory()).region == "intl"
    # ...or the plan's first region when DEFAULT_REGION is not offered either.
    set_plan(session, "basic", regions=["cn"], default_region=None)
    assert checkout(session, UserFactory()).region == "cn"


def test_checkout_in_an_explicit_region(session):
    order = checkout(session, UserFactory(), region="CN")
    assert order.region == "cn"
    dumped = OrderSchema().dump(order)
    assert dumped["region"] == "cn" and dumped["vibeBoxId"] is None


def test_a_region_the_plan_is_not_sold_in_is_422_before_the_provider_hears_of_it(session):
    set_plan(session, "pro", regions=["intl"])
    provider = FakeProvider()
    for region in ("cn", "mars"):
        with pytest.raises(ValidationError) as caught:
            checkout(session, UserFactory(), plan="pro", region=region, provider=provider)
        assert caught.value.code == "region_unavailable"
        assert caught.value.extra == {"offeredRegions": ["intl"]}
        assert "offered: intl" in caught.value.message
    assert provider.requests == []
    assert (
        session.scalar(select(func.count()).select_from(Order).where(Order.plan_id == "pro")) == 0
    )


def test_a_plan_sold_in_no_configured_region_cannot_be_bought(session):
    set_plan(session, "pro", regions=["mars"])
    with pytest.raises(ValidationError) as caught:
        checkout(session, UserFactory(), plan="pro")
    assert caught.value.code == "region_unavailable"
    assert regions.offered_regions(TWO_REGIONS, session.get(Plan, "pro")) == []


def test_the_box_of_a_paid_order_carries_the_orders_region(session):
    box = buy(session, UserFactory(), region="cn")
    assert box.region == "cn"
    assert session.get(Order, box.order_id).region == "cn"


def test_an_extension_stays_in_its_boxs_region_and_refuses_another(session):
    user = UserFactory()
    box = buy(session, user, region="cn")
    # The default would be intl; an order that extends the subscription stays in cn.
    assert checkout(session, user).region == "cn"
    assert checkout(session, user, region="cn").region == "cn"
    with pytest.raises(ConflictError) as caught:
        checkout(session, user, region="intl")
    assert caught.value.code == "region_mismatch" and caught.value.extra == {"region": "cn"}
    assert box.region == "cn"


# --- quotas -------------------------------------------------------------------------------


def live_boxes(session, user, n: int, plan: str = "basic", status: str = "running") -> None:
    for _ in range(n):
        make_box(session, plan_id=plan, user_id=user.id, status=status)
    session.commit()


def test_quota_is_409_at_checkout_before_any_provider_call(session):
    user = UserFactory()
    live_boxes(session, user, 3, plan="pro")  # other subscriptions' boxes count too
    provider = FakeProvider()
    with pytest.raises(ConflictError) as caught:
        checkout(session, user, provider=provider)
    error = caught.value
    assert error.code == "quota_exceeded"
    assert error.message == (
        "You have 3 live boxes; the limit for the Basic plan is 3. "
        "Terminate one (cancel its subscription) or contact support."
    )
    assert error.extra == {"limit": 3, "liveBoxes": 3, "pendingCheckouts": 0}
    assert provider.requests == []
    assert (
        session.scalar(select(func.count()).select_from(Order).where(Order.user_id == user.id)) == 0
    )


def test_terminating_and_terminated_boxes_do_not_count_failed_ones_do(session):
    user = UserFactory()
    live_boxes(session, user, 1, status="terminated")
    live_boxes(session, user, 1, status="terminating")
    live_boxes(session, user, 2, status="error")
    assert checkout(session, user, plan="pro").status == "pending"  # 2 + this one = 3
    with pytest.raises(ConflictError):
        checkout(session, user, plan="enterprise")  # 2 + pending pro + this one = 4


def test_unpaid_checkouts_count_until_they_are_old(session):
    user = UserFactory()
    live_boxes(session, user, 1)
    checkout(session, user, plan="pro")
    with pytest.raises(ConflictError) as caught:
        checkout(session, user, plan="enterprise", pol=policy(max_live_boxes_per_user=2))
    assert "1 live box and 1 checkout awaiting payment" in caught.value.message
    # A second checkout of the same plan replaces the first (paying both: one box).
    assert checkout(session, user, plan="pro", pol=policy(max_live_boxes_per_user=2))
    # Past QUOTA_PENDING_ORDER_SECONDS an unpaid checkout stops counting.
    session.execute(
        update(Order)
        .where(Order.user_id == user.id)
        .values(created_at=func.now() - timedelta(hours=2))
    )
    session.commit()
    assert checkout(session, user, plan="enterprise", pol=policy(max_live_boxes_per_user=2))


def test_an_extension_never_counts_against_the_quota(session):
    user = UserFactory()
    box = buy(session, user)
    live_boxes(session, user, 2, plan="pro")
    # At the limit (3 live boxes): a new plan is refused, the existing one is extended.
    with pytest.raises(ConflictError):
        checkout(session, user, plan="enterprise")
    order = checkout(session, user, plan="basic")
    outcome = billing.record_event(session, paid(order, event_id="evt_extend"))
    session.commit()
    assert outcome.boxes_to_provision == []
    sub = session.get(Subscription, box.subscription_id)
    assert order.subscription_id == sub.id


def test_a_plans_own_limit_overrides_the_global_one_and_zero_means_none(session):
    user = UserFactory()
    live_boxes(session, user, 3, plan="pro")
    set_plan(session, "basic", max_live_boxes_per_user=5)
    assert checkout(session, user).status == "pending"
    set_plan(session, "enterprise", max_live_boxes_per_user=1)
    with pytest.raises(ConflictError) as caught:
        checkout(session, user, plan="enterprise")
    assert caught.value.extra["limit"] == 1
    set_plan(session, "enterprise", max_live_boxes_per_user=0)
    assert checkout(session, user, plan="enterprise").status == "pending"
    other = UserFactory()
    live_boxes(session, other, 10)
    assert checkout(session, other, plan="pro", pol=policy(max_live_boxes_per_user=0))


def test_plans_show_their_regions_default_and_limit(session, settings):
    set_plan(session, "pro", regions=["cn"], max_live_boxes_per_user=1)
    s = replace(settings, regions=TWO_REGIONS, max_live_boxes_per_user=4)
    plans = {p["id"]: p for p in billing.describe_plans(session, s)}
    assert (plans["basic"]["offered_regions"], plans["basic"]["default_region"]) == (
        ["intl", "cn"],
        "intl",
    )
    assert (plans["pro"]["offered_regions"], plans["pro"]["default_region"]) == (["cn"], "cn")
    assert (plans["basic"]["max_live_boxes"], plans["pro"]["max_live_boxes"]) == (4, 1)


# --- concurrency (committed rows, separate connections) -----------------------------------


class Committed:
    """A user, and whatever is made for it, committed and deleted at the end."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.Session = sessionmaker(bind=engine, expire_on_commit=False)
        self.user_id = uuid.uuid4()
        self.server_ids: list[uuid.UUID] = []
        with engine.begin() as conn:
            conn.execute(
                insert(User).values(
                    id=self.user_id,
                    email=f"{self.user_id}@example.com",
                    username=f"q{self.user_id.hex[:20]}",
                    auth_provider="local",
                )
            )

    def cleanup(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(VibeBox).where(VibeBox.user_id == self.user_id))
            conn.execute(delete(Order).where(Order.user_id == self.user_id))
            conn.execute(delete(Server).where(Server.id.in_(self.server_ids)))
            conn.execute(delete(User).where(User.id == self.user_id))


@pytest.fixture
def committed(migrated_engine: Engine) -> Iterator[Committed]:
    helper = Committed(migrated_engine)
    try:
        yield helper
    finally:
        helper.cleanup()


def test_concurrent_checkouts_of_one_user_never_pass_the_limit(committed):
    with committed.Session() as session, session.begin():
        for _ in range(2):
            session.add(VibeBox(user_id=committed.user_id, plan_id="pro", status="running"))
    provider = FakeProvider()
    plans = ["basic", "enterprise", "basic", "enterprise", "basic", "enterprise"]
    barrier = threading.Barrier(len(plans))

    def attempt(plan: str) -> str:
        with committed.Session() as session:
            user = session.get(User, committed.user_id)
            session.commit()
            barrier.wait(timeout=10)
            try:
                checkout(session, user, plan=plan, provider=provider)
            except ConflictError as exc:
                session.rollback()
                return exc.code
            return "ok"

    with ThreadPoolExecutor(max_workers=len(plans)) as executor:
        results = list(executor.map(attempt, plans))
    # Two live boxes, limit 3: exactly one plan's checkouts may go ahead (a second checkout
    # of that same plan replaces the first: paying both gives one box).
    with committed.Session() as session:
        ordered = set(
            session.scalars(select(Order.plan_id).where(Order.user_id == committed.user_id))
        )
    assert len(ordered) == 1, results
    assert results.count("quota_exceeded") == 3 and results.count("ok") == 3, results
    assert {r.plan_id for r in provider.requests} == ordered


def test_concurrent_allocations_never_cross_regions(committed):
    with committed.Session() as session, session.begin():
        servers = {
            make_server(session, region=region).id: region
            for region in ["intl"] * 3 + ["cn"] * 3 + [None] * 2
        }
        boxes = {}
        for region in ["cn"] * 5 + ["intl"] * 2:
            box = VibeBox(
                user_id=committed.user_id, plan_id="basic", status="provisioning", region=region
            )
            session.add(box)
            session.flush()
            boxes[box.id] = region
    committed.server_ids += list(servers)
    barrier = threading.Barrier(len(boxes))

    def allocate(box_id: uuid.UUID):
        with committed.Session() as session:
            box = session.get(VibeBox, box_id)
            session.commit()
            barrier.wait(timeout=10)
            server = pool.allocate_server(session, box)
            session.commit()
            return box_id, server.id if server is not None else None

    with ThreadPoolExecutor(max_workers=len(boxes)) as executor:
        result = dict(executor.map(allocate, boxes))
    taken = [s for s in result.values() if s is not None]
    assert len(taken) == len(set(taken)) == 5  # 3 cn + 2 intl: no server twice
    for box_id, server_id in result.items():
        if server_id is not None:
            assert servers[server_id] == boxes[box_id]  # never another region (nor NULL)
    assert sum(1 for b, s in result.items() if s is None and boxes[b] == "cn") == 2


def test_a_box_without_a_region_takes_any_server_and_shortfall_names_the_region(session):
    anywhere = make_box(session, status="provisioning")
    server = make_server(session, region="cn", cpu_cores=2, ram_gb=4, disk_gb=40)
    assert pool.allocate_server(session, anywhere) is server
    intl = make_box(session, status="provisioning", region="intl")
    assert pool.allocate_server(session, intl) is None
    assert "in region intl" in pool.capacity_shortfall(session, "basic", region="intl")


# --- the Happy server of a region -----------------------------------------------------------


@pytest.fixture
def happy_cn() -> Iterator[HappyDouble]:
    with HappyDouble() as double:
        yield double


def test_the_account_of_a_box_is_created_on_its_regions_happy_server(
    session, settings, happy_double, happy_cn
):
    s = replace(
        settings,
        happy_server_url=happy_double.url,
        regions=replace(TWO_REGIONS, happy_server_urls=(("cn", happy_cn.url),)),
    )
    ctx = StepContext(
        settings=s,
        happy=HappyClient(happy_double.url),
        connect=None,  # type: ignore[arg-type]
        happy_clients=HappyClient,
    )
    step = CreateHappyAccount()
    user = UserFactory()
    cn_box = make_box(session, user_id=user.id, region="cn")
    intl_box = make_box(session, user_id=user.id, region="intl")
    before_default, before_cn = happy_double.accounts, happy_cn.accounts

    plan = step.prepare(session, cn_box, ctx)
    step.record(session, cn_box, step.execute(plan, ctx), ctx)
    session.flush()
    assert (happy_double.accounts, happy_cn.accounts) == (before_default, before_cn + 1)
    assert step.prepare(session, cn_box, ctx) is None  # done: a redelivery does nothing

    # The same user's intl box: the same key pair, its account on the default server.
    plan = step.prepare(session, intl_box, ctx)
    assert plan is not None
    step.record(session, intl_box, step.execute(plan, ctx), ctx)
    session.flush()
    assert (happy_double.accounts, happy_cn.accounts) == (before_default + 1, before_cn + 1)

    key = s.encryption_key
    cn = happy_accounts.get_credentials(session, user.id, key, server_url=happy_cn.url)
    intl = happy_accounts.get_credentials(session, user.id, key)
    assert cn is not None and intl is not None and cn.secret == intl.secret
    assert happy_cn.account_for_token(cn.token) is not None
    assert happy_double.account_for_token(cn.token) is None
    assert happy_double.account_for_token(intl.token) is not None
    assert (
        session.scalar(
            select(func.count()).select_from(HappyAccount).where(HappyAccount.user_id == user.id)
        )
        == 1
    )
    row = session.scalar(select(HappyServerToken).where(HappyServerToken.user_id == user.id))
    assert row is not None and row.server_url == happy_cn.url
    assert cn.token.encode() not in row.token_encrypted  # sealed at rest

    # A rejected token is replaced for that server only.
    assert happy_accounts.replace_token(
        session, user.id, "fresh", key, rejected=cn.token, server_url=happy_cn.url
    )
    assert (
        happy_accounts.get_credentials(session, user.id, key, server_url=happy_cn.url).token
        == "fresh"
    )
    assert happy_accounts.get_credentials(session, user.id, key).token == intl.token
