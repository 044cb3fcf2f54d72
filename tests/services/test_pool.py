"""The pool service against real PostgreSQL (and real sshd boxes where SSH matters)."""

# ruff: noqa: F811 - pytest fixtures imported from tests.pool_fixtures

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.crypto import DecryptionError
from app.errors import (
    ConflictError,
    HostKeyMismatchError,
    HostUnreachableError,
    InvalidStateError,
    NotFoundError,
    PermanentError,
    SSHAuthError,
    ValidationError,
)
from app.integrations.ssh import BoxSession
from app.models import Server, User, VibeBox
from app.services import pool
from app.services.pool import Resources, ServerSpec
from tests.pool_fixtures import (  # noqa: F401 - fixtures used by name
    BOX_PASSWORD,
    CLOSED_HAPPY_URL,
    FakeCheck,
    fake_fingerprint,
    key_box,
    make_box,
    make_server,
    password_box,
    pool_fleet,
)

KEY = bytes(range(32))
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-secret-body\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def spec(**overrides: Any) -> ServerSpec:
    values: dict[str, Any] = {
        "host": "10.1.2.3",
        "user": "vibe",
        "password": "s3cret-pass-word",
        "cpu_cores": 4,
        "ram_gb": 8,
        "disk_gb": 80,
    }
    values.update(overrides)
    return ServerSpec(**values)


def raw_credential(session: Session, server_id: uuid.UUID) -> bytes:
    return bytes(
        session.execute(
            text("SELECT credential_encrypted FROM servers WHERE id = :id"), {"id": server_id}
        ).scalar_one()
    )


def count_servers(session: Session) -> int:
    return len(session.scalars(select(Server.id)).all())


# --- admission without SSH -----------------------------------------------------------------


def test_add_server_pins_the_presented_key_and_seals_the_credential(session):
    check = FakeCheck(fake_fingerprint("p"))
    server = pool.add_server(
        session,
        spec(host=" Box.Example.COM ", region="eu", label="a"),
        encryption_key=KEY,
        connect_check=check,
    )
    assert server.host == "box.example.com"
    assert server.state == "available"
    assert server.auth_method == "password"
    assert server.host_key_fingerprint == fake_fingerprint("p")
    assert server.last_latency_ms == 3
    ((target, detect),) = check.calls
    assert target.host_key_fingerprint is None  # nothing expected: pin what is shown
    assert detect is False
    stored = raw_credential(session, server.id)
    assert b"s3cret-pass-word" not in stored
    assert pool.ssh_target_for(server, KEY).password == "s3cret-pass-word"
    assert "s3cret" not in repr(pool.ssh_target_for(server, KEY))


def test_sealed_credential_is_bound_to_its_row(session):
    first = pool.add_server(session, spec(), encryption_key=KEY, connect_check=FakeCheck())
    other = pool.add_server(
        session,
        spec(host="10.9.9.9", password=None, private_key=PRIVATE_KEY),
        encryption_key=KEY,
        connect_check=FakeCheck(),
    )
    assert other.auth_method == "key"
    assert b"secret-body" not in raw_credential(session, other.id)
    target = pool.ssh_target_for(other, KEY)
    assert (target.private_key, target.password) == (PRIVATE_KEY, None)
    other.credential_encrypted = first.credential_encrypted  # copied onto another row
    with pytest.raises(DecryptionError):
        pool.ssh_target_for(other, KEY)


@pytest.mark.parametrize(
    "overrides",
    [
        {"password": None},
        {"private_key": PRIVATE_KEY},
        {"password": None, "private_key": "not a key"},
        {"port": 70000},
        {"cpu_cores": 0},
    ],
)
def test_add_server_refuses_invalid_specs_before_connecting(session, overrides):
    check = FakeCheck()
    with pytest.raises(ValidationError) as info:
        pool.add_server(session, spec(**overrides), encryption_key=KEY, connect_check=check)
    assert info.value.status_code == 422
    assert info.value.errors
    assert check.calls == []


def test_add_server_refuses_a_host_showing_another_key_than_supplied(session):
    check = FakeCheck(fake_fingerprint("x"))
    with pytest.raises(ConflictError) as info:
        pool.add_server(
            session,
            spec(host_key_fingerprint=fake_fingerprint("y") + "="),
            encryption_key=KEY,
            connect_check=check,
        )
    assert info.value.code == "host_key_mismatch"
    assert info.value.status_code == 409
    # The check was told what to expect (so it can refuse before offering credentials).
    assert check.calls[0][0].host_key_fingerprint == fake_fingerprint("y")
    assert count_servers(session) == 0


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (HostUnreachableError("refused"), "server_unreachable", 422),
        (
            SSHAuthError("denied", safe_message="The server refused our login."),
            "ssh_auth_failed",
            422,
        ),
        (HostKeyMismatchError("other key"), "host_key_mismatch", 409),
        (PermanentError("odd"), "server_check_failed", 422),
    ],
)
def test_add_server_maps_connection_faults_to_client_errors(session, error, code, status):
    with pytest.raises(ValidationError if status == 422 else ConflictError) as info:
        pool.add_server(session, spec(), encryption_key=KEY, connect_check=FakeCheck(error=error))
    assert (info.value.code, info.value.status_code) == (code, status)
    assert count_servers(session) == 0


def test_add_server_refuses_a_duplicate_before_connecting(session):
    pool.add_server(session, spec(), encryption_key=KEY, connect_check=FakeCheck())
    check = FakeCheck()
    with pytest.raises(ConflictError) as info:
        pool.add_server(session, spec(host="10.1.2.3 "), encryption_key=KEY, connect_check=check)
    assert info.value.code == "server_exists"
    assert check.calls == []


def test_add_server_duplicate_race_is_settled_by_the_unique_constraint(session):
    """Another add of the same server lands between our pre-check and our insert."""

    def racing_check(target, *, detect_resources=False, **options):
        make_server(session, host=target.host, ssh_port=target.port, ssh_user=target.user)
        return FakeCheck()(target, detect_resources=detect_resources, **options)

    with pytest.raises(ConflictError) as info:
        pool.add_server(session, spec(), encryption_key=KEY, connect_check=racing_check)
    assert info.value.code == "server_exists"
    # Only our savepoint rolled back: the winner's row is intact and the session usable.
    assert count_servers(session) == 1


def test_add_server_reads_resources_it_was_not_given(session):
    check = FakeCheck(resources=Resources(6, 12, 150))
    server = pool.add_server(
        session,
        spec(cpu_cores=None, ram_gb=None, disk_gb=None),
        encryption_key=KEY,
        connect_check=check,
    )
    assert check.calls[0][1] is True
    assert (server.cpu_cores, server.ram_gb, server.disk_gb) == (6, 12, 150)


# --- admission against real sshd boxes ----------------------------------------------------


def test_add_real_box_pins_its_host_key_and_the_stored_credential_logs_in(session, key_box):
    server = pool.add_server(
        session,
        spec(
            host="127.0.0.1",
            port=key_box.port,
            user=key_box.user,
            password=None,
            private_key=key_box.client_key.private_pem,
        ),
        encryption_key=KEY,
    )
    assert server.host_key_fingerprint == key_box.host_key_fingerprint
    assert server.auth_method == "key"
    stored = raw_credential(session, server.id)
    body = "".join(key_box.client_key.private_pem.strip().splitlines()[1:-1])
    assert body[:40].encode() not in stored
    assert b"PRIVATE KEY" not in stored
    with BoxSession(pool.ssh_target_for(server, KEY)) as box_session:
        assert box_session.probe() >= 0


def test_add_real_box_reads_its_resources_when_not_given(session, key_box):
    server = pool.add_server(
        session,
        spec(
            host="127.0.0.1",
            port=key_box.port,
            user=key_box.user,
            password=None,
            private_key=key_box.client_key.private_pem,
            cpu_cores=None,
            ram_gb=None,
            disk_gb=None,
        ),
        encryption_key=KEY,
    )
    assert server.cpu_cores >= 1 and server.ram_gb >= 1 and server.disk_gb >= 1


def test_real_box_with_another_key_than_supplied_is_refused_before_login(session, key_box):
    with pytest.raises(ConflictError) as info:
        pool.add_server(
            session,
            spec(
                host="127.0.0.1",
                port=key_box.port,
                user=key_box.user,
                password=None,
                private_key=key_box.client_key.private_pem,
                host_key_fingerprint=fake_fingerprint("Q"),
            ),
            encryption_key=KEY,
        )
    assert info.value.code == "host_key_mismatch"
    assert key_box.host_key_fingerprint in info.value.message
    assert count_servers(session) == 0
    assert "Accepted" not in key_box.sshd_log()  # the credentials were never offered


def test_real_stopped_box_is_refused_as_unreachable(session, key_box):
    key_box.stop()
    with pytest.raises(ValidationError) as info:
        pool.add_server(
            session,
            spec(
                host="127.0.0.1",
                port=key_box.port,
                user=key_box.user,
                password=None,
                private_key=key_box.client_key.private_pem,
            ),
            encryption_key=KEY,
        )
    assert info.value.code == "server_unreachable"
    assert count_servers(session) == 0


def test_real_box_refuses_a_wrong_password_and_accepts_the_right_one(session, password_box):
    where = {"host": "127.0.0.1", "port": password_box.port, "user": password_box.user}
    with pytest.raises(ValidationError) as info:
        pool.add_server(session, spec(**where, password="wrong-password"), encryption_key=KEY)
    assert info.value.code == "ssh_auth_failed"
    assert count_servers(session) == 0
    server = pool.add_server(session, spec(**where, password=BOX_PASSWORD), encryption_key=KEY)
    assert server.auth_method == "password"
    assert BOX_PASSWORD.encode() not in raw_credential(session, server.id)
    assert server.host_key_fingerprint == password_box.host_key_fingerprint


def test_admission_passes_the_backend_url_and_skip_checks_to_the_check(session, caplog):
    check = FakeCheck()
    pool.add_server(
        session, spec(), encryption_key=KEY, connect_check=check, happy_server_url="http://h:1"
    )
    assert check.options[-1] == {"check_environment": True, "happy_server_url": "http://h:1"}
    admission = pool.admit_server(
        session, spec(host="10.1.2.4"), encryption_key=KEY, connect_check=check, skip_checks=True
    )
    assert check.options[-1]["check_environment"] is False
    assert admission.checks.skipped
    assert any(
        r.levelname == "WARNING" and "10.1.2.4" in r.getMessage() and "skipped" in r.getMessage()
        for r in caplog.records
    )


def test_a_login_without_happy_server_url_is_checked_against_the_backends(session, pool_fleet):
    box = pool_fleet.new_box()
    answering = box.happy_url
    box.happy_url = ""  # the login's sessions get an empty HAPPY_SERVER_URL: unset
    box.restart()
    target = box.target()
    where = {"host": target.host, "port": target.port, "user": target.user}
    key = {"password": None, "private_key": target.private_key}
    try:
        with pytest.raises(ValidationError) as info:
            pool.admit_server(
                session, spec(**where, **key), encryption_key=KEY, happy_server_url=CLOSED_HAPPY_URL
            )
        admission = pool.admit_server(
            session, spec(**where, **key), encryption_key=KEY, happy_server_url=answering
        )
    finally:
        pool_fleet.remove(box)
    assert info.value.code == "server_check_failed"
    assert f"cannot reach the Happy server at {CLOSED_HAPPY_URL}" in info.value.message
    assert "the login has no HAPPY_SERVER_URL" in info.value.message
    checks = admission.checks
    assert (checks.happy_server_url, checks.happy_server_url_source) == (answering, "backend")
    assert checks.happy_server_reach == "ok"
    assert any("HAPPY_SERVER_URL is not set in the login environment" in n for n in checks.notes)


# --- operator changes ----------------------------------------------------------------------


def test_drain_and_restore_an_idle_server(session):
    server = make_server(session)
    assert pool.drain_server(session, server.id).state == "draining"
    assert pool.drain_server(session, server.id).state == "draining"  # idempotent
    assert pool.update_server(session, server.id, state="available").state == "available"


def test_allocated_server_can_be_drained_but_not_retired(session):
    server = make_server(session)
    box = make_box(session)
    pool.allocate_server(session, box)
    assert pool.drain_server(session, server.id).state == "draining"
    for state in ("retired", "unhealthy"):
        with pytest.raises(ConflictError) as info:
            pool.update_server(session, server.id, state=state)
        assert info.value.code == "server_allocated"
    # Un-draining a server that still hosts its box puts it back to allocated.
    assert pool.update_server(session, server.id, state="available").state == "allocated"


def test_operator_state_rules(session):
    server = make_server(session, state="cleaning")
    with pytest.raises(InvalidStateError) as info:
        pool.update_server(session, server.id, state="available")
    assert info.value.code == "invalid_state_transition"
    with pytest.raises(ValidationError):
        pool.update_server(session, server.id, state="allocated")
    with pytest.raises(ValidationError):
        pool.update_server(session, server.id, credential_encrypted=b"x")
    assert pool.update_server(session, server.id, state="retired").state == "retired"
    sick = make_server(session, state="unhealthy")
    assert pool.update_server(session, sick.id, state="available").state == "available"
    updated = pool.update_server(session, sick.id, label="big", region="us", cpu_cores=16)
    assert (updated.label, updated.region, updated.cpu_cores) == ("big", "us", 16)


def test_unknown_server_is_not_found(session):
    with pytest.raises(NotFoundError) as info:
        pool.get_server(session, uuid.uuid4())
    assert info.value.code == "server_not_found"


def test_remove_is_refused_while_a_live_box_holds_the_server(session):
    server = make_server(session)
    box = make_box(session)
    pool.allocate_server(session, box)
    with pytest.raises(ConflictError) as info:
        pool.remove_server(session, server.id)
    assert info.value.code == "server_allocated"
    box.status = "terminated"
    session.flush()
    # Boxes still reference it: retired, kept for their history.
    assert pool.remove_server(session, server.id) == "retired"
    assert session.get(Server, server.id).state == "retired"


def test_remove_deletes_a_server_no_box_used(session):
    server = make_server(session)
    assert pool.remove_server(session, server.id) == "deleted"
    with pytest.raises(NotFoundError):
        pool.get_server(session, server.id)


def test_views_show_the_live_box(session):
    busy, idle = make_server(session), make_server(session, cpu_cores=64)
    box = make_box(session)
    pool.allocate_server(session, box)
    views = {v.server.id: v.allocated_box_id for v in pool.view_servers(session, [busy, idle])}
    assert views == {busy.id: box.id, idle.id: None}


# --- allocation ------------------------------------------------------------------------------


def test_allocate_picks_the_smallest_fitting_available_server(session):
    make_server(session, cpu_cores=1, ram_gb=2, disk_gb=20)  # too small for basic (2/4/40)
    make_server(session, cpu_cores=2, ram_gb=4, disk_gb=30)  # disk too small
    make_server(session, cpu_cores=2, ram_gb=4, disk_gb=40, state="unhealthy")
    make_server(session, cpu_cores=2, ram_gb=4, disk_gb=40, state="draining")
    make_server(session, cpu_cores=2, ram_gb=4, disk_gb=40, state="retired")
    large = make_server(session, cpu_cores=8, ram_gb=32, disk_gb=200)
    fitting = make_server(session, cpu_cores=2, ram_gb=8, disk_gb=50)
    box = make_box(session, plan_id="basic")
    server = pool.allocate_server(session, box)
    assert server is fitting
    assert (server.state, box.server_id) == ("allocated", fitting.id)
    assert large.state == "available"


def test_allocate_is_idempotent(session):
    make_server(session)
    make_server(session)
    box = make_box(session)
    first = pool.allocate_server(session, box)
    again = pool.allocate_server(session, box)
    assert first is not None and again is first
    states = sorted(s.state for s in session.scalars(select(Server)))
    assert states == ["allocated", "available"]


def test_allocate_keeps_to_the_box_region(session):
    make_server(session, region="eu", cpu_cores=2, ram_gb=4, disk_gb=40)
    us = make_server(session, region="us", cpu_cores=4, ram_gb=8, disk_gb=80)
    box = make_box(session, region="us")
    assert pool.allocate_server(session, box) is us
    assert pool.allocate_server(session, make_box(session, region="ap")) is None


def test_allocate_runs_one_statement(session, db):
    from sqlalchemy import event

    make_server(session)
    box = make_box(session)
    session.flush()
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            seen.append(statement)

    event.listen(db, "before_cursor_execute", note)
    try:
        server = pool.allocate_server(session, box)
    finally:
        event.remove(db, "before_cursor_execute", note)
    assert server is not None and box.server_id == server.id
    assert len(seen) == 1, seen


def test_allocate_again_returns_the_held_server_refreshed(session):
    make_server(session)
    make_server(session)
    box = make_box(session)
    first = pool.allocate_server(session, box)
    session.expire(first)
    session.expire(box, ["server_id"])  # the statement must say what the box holds
    again = pool.allocate_server(session, box)
    assert first is not None and again is first and again.state == "allocated"
    assert box.server_id == first.id


def test_allocate_returns_none_when_nothing_fits(session):
    make_server(session, cpu_cores=4, ram_gb=8, disk_gb=80)
    box = make_box(session, plan_id="enterprise")  # 8/32/200
    assert pool.allocate_server(session, box) is None
    assert box.server_id is None


def test_allocate_skips_a_server_marked_available_that_hosts_a_live_box(session):
    stale = make_server(session, cpu_cores=2, ram_gb=4, disk_gb=40)
    make_box(session, server_id=stale.id, status="running")
    free = make_server(session)
    assert pool.allocate_server(session, make_box(session)) is free


def test_release_returns_to_available_but_draining_stays_draining(session):
    server = make_server(session)
    box = make_box(session)
    pool.allocate_server(session, box)
    box.status = "terminated"
    assert pool.release_server(session, server.id).state == "available"
    second = make_box(session)
    pool.allocate_server(session, second)
    pool.drain_server(session, server.id)
    second.status = "terminated"
    assert pool.release_server(session, server.id).state == "draining"
    assert pool.allocate_server(session, make_box(session)) is None


def test_release_for_cleaning_detaches_a_live_box(session):
    server = make_server(session)
    box = make_box(session)
    pool.allocate_server(session, box)
    released = pool.release_server(session, server.id, to_state="cleaning")
    assert released.state == "cleaning"
    assert box.server_id is None
    assert pool.allocate_server(session, make_box(session)) is None  # cleaning is not free
    assert pool.release_server(session, server.id).state == "available"


def test_quarantine_takes_a_server_out_of_allocation(session):
    server = make_server(session)
    quarantined = pool.quarantine_server(session, server.id, "ssh: connection refused")
    assert (quarantined.state, quarantined.last_error) == ("unhealthy", "ssh: connection refused")
    assert pool.allocate_server(session, make_box(session)) is None


def test_probes_mark_unhealthy_after_k_failures_and_recover_through_cleaning(session):
    server = make_server(session)
    for expected in ("available", "available", "unhealthy"):
        pool.record_server_probe(session, server.id, False, None, "timeout", unhealthy_after=3)
        assert server.state == expected
    assert (server.consecutive_failures, server.last_error) == (3, "timeout")
    pool.record_server_probe(session, server.id, True, 12, None)
    # Back, but scrubbed before reuse: cleaning, then available once verified clean.
    assert (server.state, server.consecutive_failures, server.last_latency_ms) == (
        "cleaning",
        0,
        12,
    )
    assert server.last_error is None and server.last_checked_at is not None
    assert pool.finish_cleaning(session, server.id).state == "available"


def test_failed_probes_leave_an_allocated_server_allocated(session):
    server = make_server(session)
    pool.allocate_server(session, make_box(session))
    for _ in range(5):
        pool.record_server_probe(session, server.id, False, None, "refused", unhealthy_after=2)
    assert (server.state, server.consecutive_failures) == ("allocated", 5)


# --- allocation under contention (committed rows, separate connections) -------------------


class CommittedPool:
    """Rows committed through their own connection, so concurrent sessions see them;
    everything made here is deleted at the end of the test."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.Session = sessionmaker(bind=engine, expire_on_commit=False)
        self.user_id = uuid.uuid4()
        self.server_ids: list[uuid.UUID] = []
        self.box_ids: list[uuid.UUID] = []
        with engine.begin() as conn:
            conn.execute(
                insert(User).values(
                    id=self.user_id,
                    email=f"{self.user_id}@example.com",
                    username=f"c{self.user_id.hex[:20]}",
                    auth_provider="local",
                )
            )

    def servers(self, n: int, **fields: Any) -> list[uuid.UUID]:
        with self.Session() as session, session.begin():
            ids = [make_server(session, **fields).id for _ in range(n)]
        self.server_ids += ids
        return ids

    def boxes(self, n: int) -> list[uuid.UUID]:
        with self.Session() as session, session.begin():
            ids = []
            for _ in range(n):
                box = VibeBox(user_id=self.user_id, plan_id="basic", status="provisioning")
                session.add(box)
                session.flush()
                ids.append(box.id)
        self.box_ids += ids
        return ids

    def allocate(self, box_id: uuid.UUID, barrier: threading.Barrier | None = None):
        with self.Session() as session:
            box = session.get(VibeBox, box_id)
            session.commit()  # start the allocation on a fresh transaction
            if barrier is not None:
                barrier.wait(timeout=10)
            server = pool.allocate_server(session, box)
            session.commit()
            return box_id, server.id if server is not None else None

    def allocate_concurrently(self, box_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
        barrier = threading.Barrier(len(box_ids))
        with ThreadPoolExecutor(max_workers=len(box_ids)) as executor:
            return dict(executor.map(lambda b: self.allocate(b, barrier), box_ids))

    def cleanup(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(VibeBox).where(VibeBox.user_id == self.user_id))
            conn.execute(delete(Server).where(Server.id.in_(self.server_ids)))
            conn.execute(delete(User).where(User.id == self.user_id))


@pytest.fixture
def committed(migrated_engine: Engine) -> Iterator[CommittedPool]:
    helper = CommittedPool(migrated_engine)
    try:
        yield helper
    finally:
        helper.cleanup()


def _allocated_in_db(committed: CommittedPool) -> dict[uuid.UUID, uuid.UUID | None]:
    with committed.Session() as session:
        rows = session.execute(
            select(VibeBox.id, VibeBox.server_id).where(VibeBox.id.in_(committed.box_ids))
        )
        return {box_id: server_id for box_id, server_id in rows}


def test_concurrent_allocations_never_assign_a_server_twice(committed):
    servers = committed.servers(10)
    boxes = committed.boxes(10)
    result = committed.allocate_concurrently(boxes)
    assert all(result[b] is not None for b in boxes)
    assert sorted(map(str, result.values())) == sorted(map(str, servers))
    assert _allocated_in_db(committed) == result
    with committed.Session() as session:
        states = session.scalars(select(Server.state).where(Server.id.in_(servers))).all()
    assert set(states) == {"allocated"}


def test_concurrent_allocations_with_fewer_servers_than_boxes(committed):
    servers = committed.servers(4)
    boxes = committed.boxes(10)
    result = committed.allocate_concurrently(boxes)
    assigned = [s for s in result.values() if s is not None]
    assert sorted(map(str, assigned)) == sorted(map(str, servers))  # each exactly once
    assert _allocated_in_db(committed) == result


def test_100_concurrent_allocations_on_50_servers_take_each_server_once(committed):
    servers = committed.servers(50)
    boxes = committed.boxes(100)
    with ThreadPoolExecutor(max_workers=12) as executor:  # the suite's pool: 5 + 10 overflow
        result = dict(executor.map(committed.allocate, boxes))
    assigned = [s for s in result.values() if s is not None]
    assert len(assigned) == 50 and sorted(map(str, assigned)) == sorted(map(str, servers))
    assert _allocated_in_db(committed) == result
    with committed.Session() as session:
        states = session.scalars(select(Server.state).where(Server.id.in_(servers))).all()
    assert set(states) == {"allocated"}


def test_allocate_skips_a_locked_server_without_waiting(committed):
    (smallest,) = committed.servers(1, cpu_cores=2, ram_gb=4, disk_gb=40)
    (bigger,) = committed.servers(1, cpu_cores=4, ram_gb=8, disk_gb=80)
    (box,) = committed.boxes(1)
    with committed.Session() as holder:
        holder.execute(select(Server).where(Server.id == smallest).with_for_update())
        with committed.Session() as session:
            session.execute(text("SET lock_timeout = '2s'"))  # waiting would fail the test
            server = pool.allocate_server(session, session.get(VibeBox, box))
            assert server is not None and server.id == bigger
            session.commit()
        holder.rollback()


def test_allocation_waiting_on_the_box_lock_takes_no_second_server(committed):
    """A second delivery that starts while the first holds the box row: it waits for the
    lock, then reads the box as the first committed it (holding a server) and takes none,
    although the snapshot it started from showed the box without one."""
    committed.servers(3)
    (box,) = committed.boxes(1)
    with committed.Session() as first:
        first_box = first.get(VibeBox, box)
        first.execute(select(VibeBox.id).where(VibeBox.id == box).with_for_update())
        with ThreadPoolExecutor(max_workers=1) as executor:
            second = executor.submit(committed.allocate, box)
            with committed.Session() as watcher:  # wait until the second blocks on the lock
                for _ in range(400):
                    waiting = watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                            " AND query LIKE '%WITH box AS%'"
                        )
                    )
                    watcher.rollback()  # pg_stat_activity is read once per transaction
                    if waiting:
                        break
                    threading.Event().wait(0.05)
            if not waiting:
                first.rollback()  # let the second finish before failing
            assert waiting, "the second allocation never waited on the box lock"
            taken = pool.allocate_server(first, first_box)
            first.commit()
            assert taken is not None
            assert second.result(timeout=30) == (box, taken.id)
    with committed.Session() as session:
        allocated = session.scalars(
            select(Server.id).where(
                Server.id.in_(committed.server_ids), Server.state == "allocated"
            )
        ).all()
    assert allocated == [taken.id]


def test_two_deliveries_for_the_same_box_allocate_one_server(committed):
    committed.servers(3)
    (box,) = committed.boxes(1)
    barrier = threading.Barrier(2)
    with ThreadPoolExecutor(max_workers=2) as executor:
        results = list(executor.map(lambda _: committed.allocate(box, barrier), range(2)))
    assert results[0] == results[1] and results[0][1] is not None
    with committed.Session() as session:
        allocated = session.scalars(
            select(Server.id).where(
                Server.id.in_(committed.server_ids), Server.state == "allocated"
            )
        ).all()
    assert allocated == [results[0][1]]
