"""Nothing a killed worker, a lost message or a wiped broker does strands a paid box."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import func, select

from app.db import db_session
from app.extensions import get_redis
from app.models import HappyAccount, Server, VibeBox
from app.services.boxes.provisioning import STEPS
from tests.e2e.conftest import provision
from tests.support.failpoints import PAUSE_KEY, PAUSED_KEY
from tests.support.sshd import BoxAccount
from tests.support.waiting import wait_until


def _account(box_id: str) -> BoxAccount:
    account = BoxAccount.of_box(box_id)
    assert account is not None, f"box {box_id} has no Unix user"
    return account


def test_worker_sigkilled_during_each_step_still_runs_every_box_once(
    admin, make_user, add_to_pool, box_fleet, celery_worker, celery_beat, settings, happy_double
):
    redis = get_redis(settings.redis_url)
    servers = box_fleet.start(len(STEPS))
    try:
        add_to_pool(*servers)
        users = [make_user() for _ in STEPS]
        box_ids: list[str] = []
        for user, step in zip(users, STEPS, strict=True):
            redis.set(PAUSE_KEY.format(user.user_id), step, ex=120)
            box_ids.append(provision(admin, user))

        # Each box parks at its own step (after its side effect, before it is recorded)...
        for user, step in zip(users, STEPS, strict=True):
            wait_until(
                lambda u=user: redis.get(PAUSED_KEY.format(u.user_id)) is not None,
                30,
                f"a box of {user.user_id} to pause at {step}",
            )
            assert redis.get(PAUSED_KEY.format(user.user_id)).decode() == step
        # ...and the whole worker dies at once.
        celery_worker.kill()
        for user in users:
            redis.delete(PAUSE_KEY.format(user.user_id))
        celery_worker.start()

        for user, box_id in zip(users, box_ids, strict=True):
            doc = user.wait_for(box_id, {"running", "error"}, timeout=90)
            assert doc["status"] == "running", doc

        session = db_session()
        boxes = session.scalars(
            select(VibeBox).where(VibeBox.id.in_([uuid.UUID(b) for b in box_ids]))
        ).all()
        assert len({b.server_id for b in boxes}) == len(STEPS)  # one server per box
        allocated = session.scalar(
            select(func.count()).select_from(Server).where(Server.state == "allocated")
        )
        assert allocated == len(STEPS)
        for user in users:  # one Happy account per user, here and on the Happy side
            accounts = session.scalars(
                select(HappyAccount).where(HappyAccount.user_id == user.user_id)
            ).all()
            assert len(accounts) == 1
        db_session.remove()
        keys = [json.loads(_account(b).access_key_path.read_text()) for b in box_ids]
        assert len({k["secret"] for k in keys}) == len(STEPS)
    finally:
        for s in servers:
            box_fleet.remove(s)


def test_broker_wiped_after_commit_reconciler_still_provisions(
    admin, make_user, add_to_pool, box, celery_worker, celery_beat, settings
):
    add_to_pool(box)
    user = make_user()
    celery_worker.stop()  # nobody consumes: the chain's first message waits in Redis
    try:
        box_id = provision(admin, user)
        assert user.box(box_id)["status"] == "pending"
        get_redis(settings.redis_url).flushdb()  # the message is gone; Postgres remembers
    finally:
        celery_worker.start()
    doc = user.wait_for(box_id, {"running", "error"}, timeout=60)
    assert doc["status"] == "running", doc


def test_twenty_concurrent_provisions_get_twenty_distinct_servers(
    admin, make_user, add_to_pool, box_fleet
):
    servers = box_fleet.start(20)
    try:
        add_to_pool(*servers)
        users = [make_user() for _ in servers]
        ids = [provision(admin, u) for u in users]
        for user, box_id in zip(users, ids, strict=True):
            assert user.wait_for(box_id, {"running", "error"}, timeout=120)["status"] == "running"
        session = db_session()
        server_ids = session.scalars(
            select(VibeBox.server_id).where(VibeBox.id.in_([uuid.UUID(i) for i in ids]))
        ).all()
        db_session.remove()
        assert len(set(server_ids)) == 20 and None not in server_ids
        assert all(_account(i).access_key_path.exists() for i in ids)
    finally:
        for s in servers:
            box_fleet.remove(s)
