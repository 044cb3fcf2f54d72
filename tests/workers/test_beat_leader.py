"""Beat runs once: a second beat process stands by instead of doubling the sweeps."""

from __future__ import annotations

import pytest

from app.extensions import get_redis
from tests.support.waiting import wait_until
from tests.support.worker import CeleryBeatProcess, paused
from workers.beat import LEADER_KEY

# Two real `celery beat` processes of its own.
pytestmark = pytest.mark.e2e

ENTRY = "reconcile-stuck-boxes"


def test_two_beats_send_each_sweep_once_and_the_standby_takes_over(
    settings, redis_client, tmp_path
):
    env = {"RECONCILE_INTERVAL_SECONDS": "0.5", "BEAT_LEADER_TTL_SECONDS": "3"}
    with paused():  # this process's own beat (if any) would hold the lease
        redis = get_redis(settings.redis_url)
        redis.delete(LEADER_KEY)
        a = CeleryBeatProcess(tmp_path, extra_env=env)
        b = CeleryBeatProcess(tmp_path, extra_env=env)
        a.start()
        b.start()
        try:
            wait_until(lambda: a.sent(ENTRY) + b.sent(ENTRY) >= 6, 60, "six reconcile sends")
            # Both beats ran the whole time; only one ever sent.
            assert a.alive() and b.alive()
            leader, standby = (a, b) if a.sent(ENTRY) else (b, a)
            assert standby.sent(ENTRY) == 0
            assert leader.sent(ENTRY) >= 6
            # The leader dies without a goodbye: its lease runs out and the standby leads.
            leader.kill()
            wait_until(lambda: standby.sent(ENTRY) >= 2, 60, "the standby to send")
            sent_by_dead = leader.sent(ENTRY)
            wait_until(lambda: standby.sent(ENTRY) >= 4, 60, "the standby to keep sending")
            assert leader.sent(ENTRY) == sent_by_dead
        finally:
            a.stop()
            b.stop()
            from workers import celery_app

            celery_app.control.purge()
