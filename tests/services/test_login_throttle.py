"""Per-account login throttling against the real Redis."""

from __future__ import annotations

import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.extensions import get_redis
from app.services import login_throttle


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    return dataclasses.replace(
        settings,
        login_free_failures=2,
        login_delay_base_seconds=10.0,
        login_delay_max_seconds=40.0,
        login_failure_reset_seconds=3600.0,
    )


@pytest.fixture
def name() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def lock_ms(settings, name: str) -> int:
    return int(get_redis(settings.redis_url).pttl(login_throttle._keys(name)[1]))


def delay_passes(settings, name: str) -> None:
    """What the passing of the delay does, without waiting for it."""
    get_redis(settings.redis_url).delete(login_throttle._keys(name)[1])


def test_delays_start_after_the_free_failures_double_and_are_capped(settings, name):
    assert login_throttle.begin_attempt(settings, name).allowed
    assert login_throttle.begin_attempt(settings, name).allowed
    assert lock_ms(settings, name) == -2  # no delay yet
    delays = []
    for _ in range(5):
        assert login_throttle.begin_attempt(settings, name).allowed
        delays.append(lock_ms(settings, name))
        refused = login_throttle.begin_attempt(settings, name)
        assert not refused.allowed
        assert refused.retry_after_seconds == -(-delays[-1] // 1000)  # ceil
        delay_passes(settings, name)
    # 10 s, 20 s, 40 s, then the 40 s cap (a few ms may have passed before PTTL).
    assert [round(ms / 1000) for ms in delays] == [10, 20, 40, 40, 40]


def test_refused_attempts_are_not_counted(settings, name):
    for _ in range(3):
        login_throttle.begin_attempt(settings, name)
    for _ in range(20):
        assert not login_throttle.begin_attempt(settings, name).allowed
    delay_passes(settings, name)
    assert login_throttle.begin_attempt(settings, name).allowed
    assert round(lock_ms(settings, name) / 1000) == 20  # the 4th counted attempt, not the 24th


def test_success_resets_and_names_are_case_insensitive(settings, name):
    for _ in range(3):
        login_throttle.begin_attempt(settings, name.upper())
    assert not login_throttle.begin_attempt(settings, f"  {name} ").allowed
    login_throttle.succeeded(settings, name)
    assert login_throttle.begin_attempt(settings, name).allowed
    assert login_throttle.begin_attempt(settings, name).allowed
    assert lock_ms(settings, name) == -2


def test_parallel_attempts_cannot_slip_past_the_count(settings, name):
    with ThreadPoolExecutor(max_workers=16) as pool:
        verdicts = list(pool.map(lambda _: login_throttle.begin_attempt(settings, name), range(40)))
    # The free failures plus the attempt that opened the delay; the rest are refused.
    assert sum(v.allowed for v in verdicts) == settings.login_free_failures + 1


def test_keys_do_not_hold_the_name_in_clear(settings, name):
    login_throttle.begin_attempt(settings, f"{name}@example.com")
    keys = [
        k.decode()
        for k in get_redis(settings.redis_url).scan_iter(match=login_throttle.KEY_PREFIX + "*")
    ]
    assert keys and not any(name in key for key in keys)
