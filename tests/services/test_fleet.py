"""upgrade-happy's state handling against real PostgreSQL (the install itself is stubbed:
tests/test_cli_fleet.py runs it on real sshd boxes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from app.config import BootstrapSettings
from app.models import Server, VibeBox
from app.services import pool
from app.services.pool import fleet
from tests.pool_fixtures import make_box, make_server


@pytest.fixture
def upgraded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts the (stubbed) install ran on."""
    hosts: list[str] = []

    def install(target: Any, **_: Any) -> Any:
        hosts.append(target)
        return SimpleNamespace(
            step=lambda name: SimpleNamespace(status="done"), happy_version="0.13.1"
        )

    monkeypatch.setattr(fleet, "bootstrap_host", install)
    monkeypatch.setattr(pool, "ssh_target_for", lambda server, key: server.host)
    return hosts


def run_upgrade(session: Any, settings: Any, **kwargs: Any) -> fleet.UpgradeReport:
    return fleet.upgrade_happy(
        session,
        encryption_key=settings.encryption_key,
        settings=BootstrapSettings.from_env(),
        commit=session.commit,
        **kwargs,
    )


def test_a_free_server_is_drained_before_the_busy_check_so_no_box_slips_in(
    session: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, upgraded: list[str]
) -> None:
    server = make_server(session)
    box = make_box(session, status="waiting_for_capacity")
    session.commit()
    real_live_box_ids = pool.live_box_ids
    allocations: list[Server | None] = []

    def busy_check_then_a_concurrent_allocation(s: Any, ids: Any) -> Any:
        found = real_live_box_ids(s, ids)
        # Another worker allocates right after the busy check: the server must be out of
        # allocation already (drained), else the box lands on a server being upgraded.
        allocations.append(pool.allocate_server(s, s.get(VibeBox, box.id)))
        return found

    monkeypatch.setattr(pool, "live_box_ids", busy_check_then_a_concurrent_allocation)

    report = run_upgrade(session, settings)

    assert allocations == [None]
    assert [(o.server_id, o.status) for o in report.outcomes] == [(server.id, "upgraded")]
    assert upgraded == [server.host]
    session.expire_all()
    assert session.get(VibeBox, box.id).server_id is None
    assert session.scalar(select(Server.state).where(Server.id == server.id)) == "available"


def test_a_busy_server_is_skipped_and_keeps_its_state(
    session: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, upgraded: list[str]
) -> None:
    busy = make_server(session, state="allocated")
    make_box(session, server_id=busy.id, status="running")
    free = make_server(session)
    session.commit()

    report = run_upgrade(session, settings)

    outcomes = {o.server_id: o.status for o in report.outcomes}
    assert outcomes == {busy.id: "skipped_busy", free.id: "upgraded"}
    assert upgraded == [free.host]
    session.expire_all()
    states = {i: st for i, st in session.execute(select(Server.id, Server.state))}
    assert (states[busy.id], states[free.id]) == ("allocated", "available")

    # With --include-busy the busy one is upgraded too, and keeps its box (not drained).
    upgraded.clear()
    report = run_upgrade(session, settings, include_busy=True)
    assert {o.server_id: o.status for o in report.outcomes} == {
        busy.id: "upgraded",
        free.id: "upgraded",
    }
    session.expire_all()
    assert session.scalar(select(Server.state).where(Server.id == busy.id)) == "allocated"
