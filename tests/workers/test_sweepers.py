"""Sweepers never run twice at once: each holds a Redis lock while it selects and fans out."""

from __future__ import annotations

import pytest

from app.extensions import get_redis


@pytest.mark.parametrize(
    ("task_path", "lock_name"),
    [
        ("workers.maintenance:reconcile", "vibebox:lock:reconcile"),
        ("workers.maintenance:health_sweep", "vibebox:lock:health"),
        ("workers.maintenance:expire_subscriptions", "vibebox:lock:expiry"),
        ("workers.billing:reconcile_orders", "vibebox:lock:reconcile_orders"),
    ],
)
def test_a_sweeper_whose_lock_is_held_does_nothing(settings, db, task_path, lock_name):
    import importlib

    module_name, name = task_path.split(":")
    task = getattr(importlib.import_module(module_name), name)
    lock = get_redis(settings.redis_url).lock(lock_name, timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert task.run() == 0
    finally:
        lock.release()
    # Free again: it runs (and finds nothing due in an empty fleet).
    assert task.run() == 0
    assert get_redis(settings.redis_url).get(lock_name) is None
