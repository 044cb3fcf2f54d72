"""The shipped worker pool and waiting for capacity, with a real worker (issue 13).

- Waiting costs next to nothing: many boxes wait for capacity; the worker makes one
  allocation attempt per box and then sits idle (their backoff fallback is long, and no
  event wakes them); one server added wakes the OLDEST waiting box only, which gets it.
- The threads pool runs two boxes at once in one worker process: one box parked inside a
  step does not hold up the other.

Counts come from PostgreSQL (``capacity_waits``, step attempts); nothing asserts on time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import db_session
from app.extensions import get_redis
from app.models import ProvisioningStep, VibeBox
from app.services.boxes import provisioning
from tests.e2e.conftest import provision
from tests.support.failpoints import PAUSE_KEY, PAUSED_KEY
from tests.support.waiting import wait_until

WAITING_BOXES = 120


def _scalar(query: Any) -> Any:
    session = db_session()
    try:
        return session.scalar(query)
    finally:
        db_session.remove()


@pytest.fixture
def patient_worker(live, celery_worker, worker_env, tmp_path_factory) -> Iterator[Any]:
    """The suite's worker swapped for one whose capacity backoff never comes due during
    the test (both consume the same queues: only one may run). Only events wake boxes."""
    from tests.support.worker import CeleryWorkerProcess

    env = {
        **worker_env,
        "PROVISION_RETRY_BASE_SECONDS": "120",
        "CAPACITY_RETRY_MAX_SECONDS": "300",
    }
    celery_worker.stop()
    worker = CeleryWorkerProcess(
        tmp_path_factory.mktemp("celery-patient"), concurrency=8, extra_env=env, pool="threads"
    )
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()
        celery_worker.start()


def test_waiting_boxes_cost_one_attempt_each_and_a_new_server_goes_to_the_oldest(
    patient_worker, make_user, add_to_pool, box_fleet
):
    users = [make_user() for _ in range(WAITING_BOXES // 20)]
    session = db_session()
    box_ids: list[uuid.UUID] = []
    for i in range(WAITING_BOXES):  # one commit each: paid one after another
        box = provisioning.create_vibebox(
            session, user_id=users[i % len(users)].user_id, plan_id="basic"
        )
        session.commit()
        box_ids.append(box.id)
    db_session.remove()
    waiting = (
        select(func.count())
        .select_from(VibeBox)
        .where(VibeBox.id.in_(box_ids), VibeBox.status == "waiting_for_capacity")
    )
    wait_until(lambda: _scalar(waiting) == WAITING_BOXES, 180, "every box to wait")
    waits = select(func.sum(VibeBox.capacity_waits)).where(VibeBox.id.in_(box_ids))
    attempts = (
        select(func.sum(ProvisioningStep.attempts))
        .where(ProvisioningStep.vibebox_id.in_(box_ids))
        .where(ProvisioningStep.name == "allocate_server")
    )
    assert _scalar(waits) == WAITING_BOXES  # one allocation attempt per box
    # Let the worker run: no box is due, nothing is freed, so nothing runs at all.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert _scalar(waits) == WAITING_BOXES
    assert _scalar(attempts) == 0  # waiting never counts as a failed attempt

    # One server joins the pool: exactly one box is woken, the first one paid.
    server_box = box_fleet.new_box()
    try:
        (server_id,) = add_to_pool(server_box)
        oldest = box_ids[0]
        wait_until(
            lambda: _scalar(select(VibeBox.status).where(VibeBox.id == oldest)) == "running",
            120,
            "the oldest waiting box to run on the new server",
        )
        assert _scalar(select(VibeBox.server_id).where(VibeBox.id == oldest)) == server_id
        assert _scalar(waiting) == WAITING_BOXES - 1
        # The others were not woken: still one attempt each (a box that runs forgets its
        # waits).
        assert _scalar(waits) == WAITING_BOXES - 1
    finally:
        box_fleet.remove(server_box)


def test_two_boxes_run_at_once_in_one_threads_worker(
    admin, make_user, add_to_pool, box_fleet, celery_worker, settings
):
    assert celery_worker.pool == "threads"
    redis = get_redis(settings.redis_url)
    servers = box_fleet.start(2)
    parked, free = make_user(), make_user()
    try:
        add_to_pool(*servers)
        redis.set(PAUSE_KEY.format(parked.user_id), "start_daemon", ex=120)
        parked_box = provision(admin, parked)
        wait_until(
            lambda: redis.get(PAUSED_KEY.format(parked.user_id)) is not None,
            60,
            "the first box to park inside start_daemon",
        )
        # One thread holds the parked box's task; another provisions the second box.
        free_box = provision(admin, free)
        assert free.wait_for(free_box, {"running", "error"}, timeout=90)["status"] == "running"
        assert parked.box(parked_box)["status"] == "provisioning"  # still parked
        redis.delete(PAUSE_KEY.format(parked.user_id))
        doc = parked.wait_for(parked_box, {"running", "error"}, timeout=90)
        assert doc["status"] == "running", doc
    finally:
        redis.delete(PAUSE_KEY.format(parked.user_id))
        for server in servers:
            box_fleet.remove(server)
