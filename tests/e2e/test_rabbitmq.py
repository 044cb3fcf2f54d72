"""The crash-safety guarantees on RabbitMQ, as on Redis: the whole stack of this module (the
API publishing in this process, the worker, beat) runs on a RabbitMQ node of the suite's own
(``rabbitmq`` fixture), with only ``CELERY_BROKER_URL`` changed; results, locks and the test
pause points stay on Redis. Also: workers on several machines (two node names, two queue
sets) sharing the broker and PostgreSQL.

The session's Redis worker and beat (if this process started them) are paused meanwhile, so
nothing but the RabbitMQ processes can move a box here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import db_session
from app.extensions import get_redis
from app.models import HappyAccount, Server, VibeBox
from app.services.boxes.provisioning import STEPS
from tests.e2e.conftest import provision
from tests.support.failpoints import PAUSE_KEY, PAUSED_KEY
from tests.support.sshd import BoxAccount
from tests.support.waiting import wait_until
from tests.support.worker import CeleryBeatProcess, CeleryWorkerProcess, paused


@pytest.fixture(scope="module")
def on_rabbitmq(rabbitmq: Any, redis_client: Any) -> Iterator[Any]:
    """This process publishes to RabbitMQ (as the API would with CELERY_BROKER_URL=amqp://)."""
    from workers import celery_app

    conf = celery_app.conf
    keys = ("broker_read_url", "broker_write_url", "broker_transport_options")
    saved = {k: conf[k] for k in keys}

    def reset_pools() -> None:
        # kombu keeps one pool per broker URL (kombu.pools): forget ours, close nothing
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    with paused():
        conf.update(
            broker_read_url=rabbitmq.url,
            broker_write_url=rabbitmq.url,
            broker_transport_options={"confirm_publish": True, "connect_timeout": 5},
        )
        reset_pools()
        try:
            yield rabbitmq
        finally:
            conf.update(saved)
            reset_pools()


@pytest.fixture(scope="module")
def rabbitmq_env(on_rabbitmq, worker_env):  # type: ignore[no-untyped-def]
    """Only the broker URL changed: CELERY_RESULT_BACKEND empty (= unset), so results take
    their default (REDIS_URL), as on an operator's stack."""
    return {**worker_env, "CELERY_BROKER_URL": on_rabbitmq.url, "CELERY_RESULT_BACKEND": ""}


@pytest.fixture(scope="module")
def celery_worker(on_rabbitmq, rabbitmq_env, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Overrides the session's Redis worker for this module: a worker on RabbitMQ."""
    worker = CeleryWorkerProcess(
        tmp_path_factory.mktemp("celery-rabbitmq"),
        concurrency=len(STEPS) + 1,  # every step parked at once, one process to spare
        extra_env=rabbitmq_env,
        broker_url=on_rabbitmq.url,
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def celery_beat(celery_worker, rabbitmq_env, tmp_path_factory):  # type: ignore[no-untyped-def]
    beat = CeleryBeatProcess(tmp_path_factory.mktemp("beat-rabbitmq"), extra_env=rabbitmq_env)
    beat.start()
    yield beat
    beat.stop()


def _assert_each_box_running_once(box_ids: list[str], users: list[Any]) -> None:
    session = db_session()
    boxes = session.scalars(
        select(VibeBox).where(VibeBox.id.in_([uuid.UUID(b) for b in box_ids]))
    ).all()
    assert {b.status for b in boxes} == {"running"}
    assert len({b.server_id for b in boxes}) == len(box_ids)  # one server per box
    allocated = session.scalar(
        select(func.count()).select_from(Server).where(Server.state == "allocated")
    )
    assert allocated == len(box_ids)
    for user in users:  # one Happy account per user
        accounts = session.scalars(
            select(HappyAccount).where(HappyAccount.user_id == user.user_id)
        ).all()
        assert len(accounts) == 1
    db_session.remove()
    keys = []
    for box_id in box_ids:
        account = BoxAccount.of_box(box_id)
        assert account is not None, f"box {box_id} has no Unix user"
        keys.append(json.loads(account.access_key_path.read_text())["secret"])
    assert len(set(keys)) == len(box_ids)


def test_box_reaches_running_on_rabbitmq(admin, make_user, add_to_pool, box, celery_worker):
    add_to_pool(box)
    user = make_user()
    box_id = provision(admin, user)
    doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
    assert doc["status"] == "running", doc


def test_worker_sigkilled_during_each_step_on_rabbitmq_still_runs_every_box_once(
    admin, make_user, add_to_pool, box_fleet, celery_worker, celery_beat, settings
):
    """As tests/e2e/test_crash_safety.py on Redis: one box parked at each step (after its side
    effect, before it is recorded), then the whole worker SIGKILLed at once."""
    redis = get_redis(settings.redis_url)
    servers = box_fleet.start(len(STEPS))
    try:
        add_to_pool(*servers)
        users = [make_user() for _ in STEPS]
        box_ids = []
        for user, step in zip(users, STEPS, strict=True):
            redis.set(PAUSE_KEY.format(user.user_id), step, ex=120)
            box_ids.append(provision(admin, user))
        for user, step in zip(users, STEPS, strict=True):
            wait_until(lambda u=user: redis.get(PAUSED_KEY.format(u.user_id)) is not None, 60, step)
        # RabbitMQ hands the unacknowledged messages back as soon as the connection drops.
        celery_worker.kill()
        for user in users:
            redis.delete(PAUSE_KEY.format(user.user_id))
        celery_worker.start()
        for user, box_id in zip(users, box_ids, strict=True):
            doc = user.wait_for(box_id, {"running", "error"}, timeout=120)
            assert doc["status"] == "running", doc
        _assert_each_box_running_once(box_ids, users)
    finally:
        for s in servers:
            box_fleet.remove(s)


def test_message_lost_after_commit_on_rabbitmq_reconciler_still_provisions(
    admin, make_user, add_to_pool, box, celery_worker, celery_beat
):
    from workers import celery_app

    add_to_pool(box)
    user = make_user()
    celery_worker.stop()  # nobody consumes: the chain's first message waits in RabbitMQ
    try:
        box_id = provision(admin, user)
        assert user.box(box_id)["status"] == "pending"
        assert celery_app.control.purge() >= 1  # the message is gone; PostgreSQL remembers
    finally:
        celery_worker.start()
    doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
    assert doc["status"] == "running", doc


def _fresh_broker_connections(worker: CeleryWorkerProcess) -> None:
    """Drop this process's pooled broker connections (kombu keeps one pool per URL), the
    API's and the worker helper's client's alike."""
    from kombu import pools

    from workers import celery_app

    pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    worker._client = None


def test_broker_restart_with_a_box_in_flight(
    admin, make_user, add_to_pool, box_fleet, celery_worker, celery_beat, settings, on_rabbitmq
):
    redis = get_redis(settings.redis_url)
    servers = box_fleet.start(2)
    try:
        add_to_pool(*servers)
        _restart_with_a_box_in_flight(admin, make_user, redis, celery_worker, on_rabbitmq)
    finally:
        _fresh_broker_connections(celery_worker)  # later purges and pings: live connections
        for s in servers:
            box_fleet.remove(s)


def _restart_with_a_box_in_flight(admin, make_user, redis, celery_worker, on_rabbitmq):  # type: ignore[no-untyped-def]
    user = make_user()
    redis.set(PAUSE_KEY.format(user.user_id), "configure_server", ex=180)
    box_id = provision(admin, user)
    wait_until(lambda: redis.get(PAUSED_KEY.format(user.user_id)) is not None, 60, "pause")
    # The step is mid-flight (its message unacknowledged) when RabbitMQ goes down and comes
    # back: the durable queue keeps the persistent message, the worker reconnects by itself.
    on_rabbitmq.restart()
    redis.delete(PAUSE_KEY.format(user.user_id))
    doc = user.wait_for(box_id, {"running", "error"}, timeout=180)
    assert doc["status"] == "running", doc
    assert celery_worker.alive()
    # The API's pooled connection died with the broker: its next publish reconnects.
    late = make_user()
    late_box = provision(admin, late)
    assert late.wait_for(late_box, {"running", "error"}, timeout=120)["status"] == "running"
    _assert_each_box_running_once([box_id, late_box], [user, late])


def test_two_workers_on_two_machines_run_every_box_once_when_one_is_killed(
    admin,
    make_user,
    add_to_pool,
    box_fleet,
    celery_worker,
    celery_beat,
    settings,
    rabbitmq_env,
    on_rabbitmq,
    tmp_path,
):
    """Worker ``a`` serves only provisioning, ``b`` every queue (as README's topology); ``a``
    is SIGKILLed with a box parked mid-chain and ``b`` finishes everything."""
    redis = get_redis(settings.redis_url)
    celery_worker.stop()  # only a and b consume in this test
    a = CeleryWorkerProcess(
        tmp_path,
        concurrency=2,
        extra_env=rabbitmq_env,
        broker_url=on_rabbitmq.url,
        queues="provisioning",
        name=f"a-{uuid.uuid4().hex[:6]}@%h",
    )
    b = CeleryWorkerProcess(
        tmp_path,
        concurrency=2,
        extra_env=rabbitmq_env,
        broker_url=on_rabbitmq.url,
        queues="provisioning,control,maintenance,celery",
        name=f"b-{uuid.uuid4().hex[:6]}@%h",
    )
    servers = box_fleet.start(4)
    try:
        add_to_pool(*servers)
        a.start()
        parked = make_user()
        # While a is the only worker, the parked box's chain is certainly in a's hands.
        redis.set(PAUSE_KEY.format(parked.user_id), "configure_server", ex=180)
        parked_box = provision(admin, parked)
        wait_until(
            lambda: redis.get(PAUSED_KEY.format(parked.user_id)) is not None, 60, "a to park"
        )
        b.start()
        others = [make_user() for _ in range(3)]
        other_boxes = [provision(admin, u) for u in others]
        a.kill()
        redis.delete(PAUSE_KEY.format(parked.user_id))
        users = [parked, *others]
        box_ids = [parked_box, *other_boxes]
        for user, box_id in zip(users, box_ids, strict=True):
            doc = user.wait_for(box_id, {"running", "error"}, timeout=180)
            assert doc["status"] == "running", doc
        _assert_each_box_running_once(box_ids, users)
        # b, not the dead a, finished the parked box's chain
        assert f"box {parked_box}: step mark_running ended" in b.tail(5000)
    finally:
        a.stop()
        b.stop()
        for s in servers:
            box_fleet.remove(s)
        celery_worker.start()
