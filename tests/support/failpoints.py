"""Test-only pause points inside the real worker process (the product never imports this).

``celery -A tests.support.failpoints worker`` is the real ``workers`` app with test-only
extras: the ``tests.nap`` task (below), and pause points - a step can be told, per box, to
pause at its most dangerous moment, so a test can SIGKILL the worker exactly there:

- steps with remote work pause in ``record`` - the remote side effect happened (Happy
  issued a token, the file was written, the daemon started) but nothing is recorded yet;
- ``allocate_server`` (database only) pauses after choosing a server, before commit.

A test sets ``vibebox:test:pause:<user id>`` to a step name (before the box exists, so
no chain can outrun it); the worker writes ``vibebox:test:paused:<user id>`` when a box of
that user is parked there.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from app.services.boxes import steps
from workers import celery_app

app = celery_app
PAUSE_KEY = "vibebox:test:pause:{}"
PAUSED_KEY = "vibebox:test:paused:{}"
MAX_PAUSE_SECONDS = 60.0  # bounded: a forgotten pause never hangs a worker for good

_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


def _maybe_pause(step: str, user_id: Any) -> None:
    wanted = _client.get(PAUSE_KEY.format(user_id))
    if wanted is None or wanted.decode() != step:
        return
    _client.set(PAUSED_KEY.format(user_id), step, ex=120)
    deadline = time.monotonic() + MAX_PAUSE_SECONDS
    while time.monotonic() < deadline and _client.get(PAUSE_KEY.format(user_id)) is not None:
        time.sleep(0.05)


def _install() -> None:
    for name, step in steps.STEP_IMPLEMENTATIONS.items():
        prepare, record = step.prepare, step.record

        def paused_prepare(session, box, ctx, _prepare=prepare, _name=name):  # type: ignore[no-untyped-def]
            plan = _prepare(session, box, ctx)
            if plan is None:
                _maybe_pause(_name, box.user_id)
            return plan

        def paused_record(session, box, result, ctx, _record=record, _name=name):  # type: ignore[no-untyped-def]
            _maybe_pause(_name, box.user_id)
            return _record(session, box, result, ctx)

        step.prepare = paused_prepare  # type: ignore[method-assign]
        step.record = paused_record  # type: ignore[method-assign]


_install()

# Cloud creation: pause right after the provider created the node, before our commit.
CLOUD_PAUSE_KEY = "vibebox:test:pause:cloud-create"
CLOUD_PAUSED_KEY = "vibebox:test:paused:cloud-create"


def _install_cloud() -> None:
    from app.integrations import cloud

    create = cloud.LibcloudCompute.create_node

    def paused_create(self, **kwargs):  # type: ignore[no-untyped-def]
        node = create(self, **kwargs)
        if _client.get(CLOUD_PAUSE_KEY) is not None:
            _client.set(CLOUD_PAUSED_KEY, node.id, ex=120)
            deadline = time.monotonic() + MAX_PAUSE_SECONDS
            while time.monotonic() < deadline and _client.get(CLOUD_PAUSE_KEY) is not None:
                time.sleep(0.05)
        return node

    cloud.LibcloudCompute.create_node = paused_create  # type: ignore[method-assign]


_install_cloud()


@celery_app.task(name="tests.nap", acks_late=True, ignore_result=True)
def nap(seconds: float) -> None:
    """Test-only busy work: late-acknowledged like the provisioning steps, so a broker
    restart finds tasks running and messages unacknowledged (tests/abuse)."""
    time.sleep(min(float(seconds), 5.0))
