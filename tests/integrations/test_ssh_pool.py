"""The per-process SSH connection pool: consecutive steps reuse one connection safely."""

from __future__ import annotations

import pytest

from app.errors import HostKeyMismatchError, HostUnreachableError
from app.integrations.ssh import BoxSession, SessionPool


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def made() -> list[BoxSession]:
    return []


@pytest.fixture
def pool(made):  # type: ignore[no-untyped-def]
    clock = Clock()

    def factory(target):  # type: ignore[no-untyped-def]
        session = BoxSession(target, connect_timeout=3, command_timeout=10)
        made.append(session)
        return session

    p = SessionPool(factory, max_idle=30, clock=clock)
    p.clock_ = clock  # type: ignore[attr-defined]
    yield p
    p.close()


def test_consecutive_work_on_one_box_reuses_the_connection(pool, made, box):
    target = box.target()
    assert pool.run(target, lambda s: s.run("echo one").output.strip()) == "one"
    assert pool.run(target, lambda s: s.run("echo two").output.strip()) == "two"
    assert len(made) == 1 and pool.reused == 1


def test_an_idle_connection_past_max_idle_is_replaced(pool, made, box):
    target = box.target()
    pool.run(target, lambda s: s.probe())
    pool.clock_.now += 31
    pool.run(target, lambda s: s.probe())
    assert len(made) == 2 and pool.reused == 0
    assert not made[0].is_open()  # the old one was closed, not leaked


def test_a_dead_pooled_connection_is_retried_on_a_fresh_one(pool, made, box, monkeypatch):
    target = box.target()
    pool.run(target, lambda s: s.probe())
    stale = made[0]
    stale._client.get_transport().close()  # the peer dropped it while idle...
    monkeypatch.setattr(stale, "is_open", lambda: True)  # ...and it still looks open
    calls = []

    def work(session: BoxSession) -> str:
        calls.append(session)
        return session.run("echo ok").output.strip()

    assert pool.run(target, work) == "ok"
    assert calls == [stale, made[1]]  # ran again, once, on a new connection


def test_a_fresh_connection_that_fails_is_not_retried(pool, made, box):
    target = box.target()
    box.stop()
    with pytest.raises(HostUnreachableError):
        pool.run(target, lambda s: s.probe())
    assert len(made) == 1
    box.start()


def test_a_re_pinned_server_never_gets_an_old_connection(pool, made, box):
    pool.run(box.target(), lambda s: s.probe())
    other_pin = box.target(host_key_fingerprint=box.host_key_fingerprint + "x")
    with pytest.raises(HostKeyMismatchError):  # the new pin does not match: refused
        pool.run(other_pin, lambda s: s.probe())
    assert len(made) == 2 and pool.reused == 0


def test_stale_idle_connections_are_closed_without_waiting_for_their_next_use(
    pool, made, box_fleet
):
    first, second = box_fleet.new_box(), box_fleet.new_box()
    try:
        pool.run(first.target(), lambda s: s.probe())
        pool.clock_.now += 31
        pool.run(second.target(), lambda s: s.probe())  # any use sweeps the stale ones
        assert not made[0].is_open() and made[1].is_open()
    finally:
        box_fleet.remove(first)
        box_fleet.remove(second)
