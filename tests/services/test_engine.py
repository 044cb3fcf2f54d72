"""The lifecycle engine: its transition table, the six defects it was built to end (each
reproduced as the operator found it), and its failure policy. Real PostgreSQL, the real
engine and allocation; the remote side of each step is scripted (engine_harness)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from app.models import PaymentEvent, Server, Subscription, VibeBox
from app.services import pool
from app.services.boxes import engine, lifecycle, status_document, statuses
from app.services.boxes.statuses import BoxStatus as S
from app.services.jobs import Job
from tests.services.engine_harness import PERMANENT, TRANSIENT, UNUSABLE, Harness


@pytest.fixture
def h(session, settings):
    harness = Harness(session, settings)
    yield harness
    harness.close()


def _subscribed_box(h: Harness, plan: str = "basic") -> VibeBox:
    return h.pay(plan)


def _running_box(h: Harness) -> VibeBox:
    h.add_server()
    box = _subscribed_box(h)
    assert h.drive(box.id).status == S.RUNNING
    return box


# --- the transition table -----------------------------------------------------------------------


def test_every_transition_moves_only_from_its_allowed_statuses():
    for name, (allowed, target) in statuses.TRANSITIONS.items():
        for status in S:
            box = VibeBox(status=str(status))
            to = target or sorted(statuses.TO_ANY[name])[0]
            if status in allowed:
                assert statuses.transition(box, name, to if target is None else None) == to
                assert box.status == to
            else:
                with pytest.raises(statuses.IllegalTransitionError):
                    statuses.transition(box, name, to if target is None else None)
                assert box.status == status


def test_a_caller_given_target_must_be_one_the_table_allows():
    box = VibeBox(status="starting")
    with pytest.raises(ValueError):
        statuses.transition(box, "action_done", S.TERMINATED)


def test_no_module_but_the_engine_assigns_a_box_status():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    # statuses.py holds the engine's transition table and its one writer, ``transition``
    engine_modules = {"app/services/boxes/engine.py", "app/services/boxes/statuses.py"}
    offenders = []
    for path in [*root.joinpath("app").rglob("*.py"), *root.joinpath("workers").rglob("*.py")]:
        if path.relative_to(root).as_posix() in engine_modules:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bbox\.status\s*=[^=]", line):
                offenders.append(f"{path.relative_to(root)}:{n}")
    assert offenders == []


def test_box_statuses_are_the_engines_enum_everywhere():
    """The enum is the list the database's CHECK constraint allows, and no module outside
    the table compares or writes a box status as a bare string."""
    import pathlib
    import re

    from app.models.vibebox import VIBEBOX_STATUSES

    assert tuple(S) == VIBEBOX_STATUSES
    root = pathlib.Path(__file__).resolve().parents[2]
    names = "|".join(s.value for s in S)
    literal = re.compile(rf"""(box\.status|VibeBox\.status)\W[^\n]*["']({names})["']""")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in [*root.joinpath("app").rglob("*.py"), *root.joinpath("workers").rglob("*.py")]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == []


# --- the six defects ------------------------------------------------------------------------------


def test_defect1_a_box_that_failed_in_a_control_action_comes_back_after_admin_retry(h):
    box = _running_box(h)
    engine.request_action(h.session, box.id, owner_id=box.user_id, action="restart")
    h.session.commit()
    h.world.script["control"] = [TRANSIENT] * 50  # the server stopped answering
    assert h.drive(box.id).status == S.ERROR
    assert h.box(box.id).action == "restart"

    engine.retry_failed_box(h.session, box.id)  # the server is back
    h.session.commit()
    assert h.box(box.id).status == S.RESTARTING
    assert "control" in h.jobs_for(box.id)
    h.world.script["control"] = []
    done = h.drive(box.id)
    assert done.status == S.RUNNING and done.action is None
    # ...and it is not stranded: connect and control work again.
    engine.request_action(h.session, box.id, owner_id=box.user_id, action="stop")


def test_defect2_admin_terminate_is_never_cancelled_by_an_active_subscription(h):
    box = _running_box(h)
    assert engine.start_teardown(h.session, box.id, reason="admin", cancellable=False)
    h.session.commit()
    done = h.drive(box.id)
    assert done.status == S.TERMINATED
    server = h.session.get(Server, done.server_id)
    assert server is not None and server.state == "cleaning"


def test_an_expiry_teardown_is_cancelled_by_a_renewal_that_lands_before_it_begins(h):
    box = _running_box(h)
    assert engine.start_teardown(h.session, box.id, reason="expired", cancellable=True)
    h.session.commit()
    h.run(box.id)  # the subscription is still active: a renewal landed
    back = h.box(box.id)
    assert back.status == S.RUNNING
    assert [e.kind for e in engine_events(h, box.id)][-1] == "teardown_cancelled"


def test_an_expiry_teardown_waits_for_a_renewal_recorded_but_not_yet_applied(h):
    """Webhooks are recorded at once and applied by a job: a renewal recorded while the
    expiry's teardown is queued must win, whichever job a worker runs first."""
    box = _running_box(h)
    sub = h.session.get(Subscription, box.subscription_id)
    assert sub is not None
    sub.payment_subscription_id = f"sub_{uuid.uuid4().hex[:12]}"
    sub.status = "expired"
    sub.current_period_end = datetime.now(UTC) - timedelta(hours=1)
    assert engine.start_teardown(h.session, box.id, reason="expired", cancellable=True)
    renewal = PaymentEvent(
        provider=sub.payment_provider,
        event_id=f"evt_{uuid.uuid4().hex[:12]}",
        type="invoice.paid",
        payload={},
        subject=sub.payment_subscription_id,
    )
    h.session.add(renewal)
    h.session.commit()

    h.run(box.id)  # the teardown's job ran first: it waits, the daemon is not touched
    waiting = h.box(box.id)
    assert waiting.status == S.TERMINATING
    assert "payment" in (waiting.last_error or "")
    assert ("stop_daemon", box.id) not in h.world.calls

    sub.status = "active"  # the renewal's job applies it
    sub.current_period_end = datetime.now(UTC) + timedelta(days=30)
    renewal.processed_at = datetime.now(UTC)
    h.session.commit()
    h.run(box.id)
    assert h.box(box.id).status == S.RUNNING
    assert [e.kind for e in engine_events(h, box.id)][-1] == "teardown_cancelled"


def test_a_forced_teardown_does_not_wait_for_payments(h):
    box = _running_box(h)
    sub = h.session.get(Subscription, box.subscription_id)
    assert sub is not None
    sub.payment_subscription_id = f"sub_{uuid.uuid4().hex[:12]}"
    assert engine.start_teardown(h.session, box.id, reason="admin", cancellable=False)
    h.session.add(
        PaymentEvent(
            provider=sub.payment_provider,
            event_id=f"evt_{uuid.uuid4().hex[:12]}",
            type="invoice.paid",
            payload={},
            subject=sub.payment_subscription_id,
        )
    )
    h.session.commit()
    assert h.drive(box.id).status == S.TERMINATED


def engine_events(h: Harness, box_id: uuid.UUID):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from app.models import BoxEvent

    return list(
        h.session.scalars(
            select(BoxEvent).where(BoxEvent.vibebox_id == box_id).order_by(BoxEvent.created_at)
        )
    )


def test_defect3_failures_stay_in_the_history_and_progress_does_not_go_back(h):
    server = h.add_server()
    box = _subscribed_box(h)
    h.world.script["start_daemon"] = [PERMANENT]
    failed = h.drive(box.id)
    assert failed.status == S.ERROR
    done_before, _ = status_document.progress(failed)
    assert done_before == 3  # account, allocation, configure: not reset by the failure
    failed_step = next(s for s in failed.steps if s.name == "start_daemon")
    assert failed_step.state == "failed" and failed_step.last_error

    engine.retry_failed_box(h.session, box.id)
    h.session.commit()
    retried = h.box(box.id)
    assert retried.status == S.PROVISIONING
    kinds = [e.kind for e in engine_events(h, box.id)]
    assert "failed" in kinds and "retried" in kinds  # who did what stays
    assert any("start_daemon cannot work" in e.message for e in engine_events(h, box.id))
    assert h.session.get(Server, server.id).state == "cleaning"  # left for its scrub
    pool.finish_cleaning(h.session, server.id)
    h.session.commit()
    assert h.drive(box.id).status == S.RUNNING


def test_defect4_capacity_waits_back_off_and_say_why(h, settings):
    h.add_server(cpu=2, ram=4, disk=40)  # too small for pro
    box = _subscribed_box(h, plan="pro")
    delays = []
    for _ in range(6):  # the first task makes the account, then tries allocation (RUN_AHEAD)
        outcome = h.run(box.id)
        assert outcome.kind == "waiting"
        assert outcome.step == "allocate_server"
        delays.append(outcome.delay)
    waiting = h.box(box.id)
    assert waiting.status == S.WAITING_FOR_CAPACITY
    assert "No server in the pool fits the pro plan (needs 4 CPU / 8 GB RAM" in waiting.last_error
    assert "the largest free one has 2 CPU" in waiting.last_error
    assert waiting.capacity_waits == 6
    assert next(s for s in waiting.steps if s.name == "allocate_server").attempts == 0
    p = settings.provisioning
    ceilings = [
        min(p.capacity_retry_max_seconds, p.retry_base_seconds * 2 ** (n - 1)) for n in range(1, 7)
    ]
    assert all(d <= c + 1e-9 for d, c in zip(delays, ceilings, strict=True))
    assert max(ceilings) > p.retry_base_seconds  # the exponent grows

    # A fitting server added wakes the waiting box at once.
    h.published.clear()
    pool_server = h.add_server(cpu=4, ram=8, disk=80)
    pool.wake_waiting_boxes(h.session, pool_server)
    h.session.commit()
    assert "allocate_server" in h.jobs_for(box.id)
    assert h.drive(box.id).server_id == pool_server.id


def test_defect5_a_final_failure_is_reported_as_failed(h):
    h.add_server()
    box = _subscribed_box(h)
    h.world.script["create_happy_account"] = [PERMANENT]
    assert h.run(box.id).kind == "failed"


def test_defect6_a_retry_landing_after_terminate_does_not_resurrect_the_box(h):
    box = _subscribed_box(h)  # no server at all: it waits for capacity
    h.run(box.id)
    assert h.run(box.id).kind == "waiting"
    h.countdown_elapsed(box.id)
    # The allocation retry is claimed by a worker...
    assert engine.claim(h.session, box.id, "allocate_server", lease_seconds=60) is engine.Claim.RUN
    h.session.commit()
    # ...while an admin terminates the box...
    engine.start_teardown(h.session, box.id, reason="admin", cancellable=False)
    h.session.commit()
    assert h.box(box.id).status == S.TERMINATED
    # ...and then the worker's attempt ends in "no capacity" and would schedule a retry.
    assert (
        engine.wait_for_capacity(
            h.session, box.id, "allocate_server", reason="x", base=1, maximum=2
        )
        is None
    )
    assert (
        engine.schedule_retry(h.session, box.id, "allocate_server", safe_error="x", delay=1)
        is False
    )
    h.session.commit()
    assert h.box(box.id).status == S.TERMINATED and h.box(box.id).next_retry_at is None


# --- the policy -------------------------------------------------------------------------------


def test_transient_faults_retry_with_growing_delays_then_fail_readably(h, settings):
    h.add_server()
    box = _subscribed_box(h)
    h.world.script["create_happy_account"] = [TRANSIENT] * 100
    kinds = [h.run(box.id).kind for _ in range(settings.provisioning.max_attempts)]
    assert kinds[:-1] == ["retry"] * (settings.provisioning.max_attempts - 1)
    assert kinds[-1] == "failed"
    failed = h.box(box.id)
    assert failed.status == S.ERROR and failed.last_error == "create_happy_account failed for now."
    attempts = [e for e in engine_events(h, box.id) if e.kind == "attempt_failed"]
    assert len(attempts) == settings.provisioning.max_attempts  # every attempt kept


def test_an_unusable_server_is_quarantined_and_the_box_moves(h):
    first = h.add_server()
    box = _subscribed_box(h)
    h.world.script["configure_server"] = [UNUSABLE]
    # One task: the account, allocation and configuration run in a row (RUN_AHEAD).
    assert h.run(box.id).kind == "moved"
    assert h.session.get(Server, first.id).state == "unhealthy"
    second = h.add_server()
    assert h.drive(box.id).status == S.RUNNING
    assert h.box(box.id).server_id == second.id
    assert "moved" in [e.kind for e in engine_events(h, box.id)]


def test_the_reconciler_resends_a_box_whose_worker_died_and_one_whose_message_was_lost(h):
    h.add_server()
    crashed = _subscribed_box(h)
    lost = _subscribed_box(h)
    h.add_server()
    assert engine.claim(h.session, crashed.id, "create_happy_account", lease_seconds=60) is (
        engine.Claim.RUN
    )
    h.session.commit()
    h.published.clear()
    assert engine.stranded(h.session, older_than=3600) == []  # a live lease, a fresh box
    h.expire_leases()
    h.age_everything()
    repairs = {r.box_id: r for r in engine.stranded(h.session, older_than=60)}
    assert set(repairs) >= {crashed.id, lost.id}
    for repair in repairs.values():
        engine.resend(h.session, repair)
    h.session.commit()
    assert h.jobs_for(crashed.id) == ["create_happy_account"]
    assert h.jobs_for(lost.id) == ["create_happy_account"]
    assert h.drive(crashed.id).status == h.drive(lost.id).status == S.RUNNING


def test_expiry_tears_down_and_the_server_goes_to_cleaning(h):
    box = _running_box(h)
    sub = h.session.get(Subscription, box.subscription_id)
    sub.current_period_start = datetime.now(UTC) - timedelta(days=35)
    sub.current_period_end = datetime.now(UTC) - timedelta(days=5)
    h.session.commit()
    assert lifecycle.expire_subscription(h.session, sub.id, grace_seconds=0) == [box.id]
    h.session.commit()
    assert h.drive(box.id).status == S.TERMINATED


# --- waiting for capacity costs next to nothing (issue 13) ------------------------------------


_paid_at = count()


def _waiting_boxes(h: Harness, n: int, plan: str = "pro") -> list[VibeBox]:
    """Boxes paid one after another (a test runs in one transaction, where now() does not
    move: the order is set explicitly), each waiting for capacity."""
    boxes = []
    for _ in range(n):
        box = _subscribed_box(h, plan=plan)
        box.created_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(_paid_at))
        h.session.commit()
        assert h.run(box.id).kind == "waiting"
        boxes.append(box)
    h.published.clear()
    return boxes


def test_a_freed_server_wakes_only_the_oldest_waiting_box_it_fits(h):
    boxes = _waiting_boxes(h, 5)
    small = _waiting_boxes(h, 1, plan="basic")
    h.published.clear()
    server = h.add_server(cpu=4, ram=8, disk=80)
    assert pool.wake_waiting_boxes(h.session, server) == 1
    h.session.commit()
    woken = [j.box_id for j in h.published if isinstance(j, Job)]
    assert woken == [str(boxes[0].id)]  # FIFO: the first paid, one per server
    assert h.box(boxes[0].id).next_retry_at <= datetime.now(UTC)  # due now
    # More servers freed than boxes wait: each is woken once, oldest first (a basic box
    # fits a pro server too).
    h.published.clear()
    assert pool.wake_waiting_boxes(h.session, server, count=10) == 6
    h.session.commit()
    assert [j.box_id for j in h.published if isinstance(j, Job)][:2] == [
        str(boxes[0].id),
        str(boxes[1].id),
    ]
    # A server too small for pro wakes only boxes it fits.
    h.published.clear()
    tiny = h.add_server(cpu=2, ram=4, disk=40)
    h.published.clear()
    pool.wake_waiting_boxes(h.session, tiny, count=10)
    h.session.commit()
    assert [j.box_id for j in h.published if isinstance(j, Job)] == [str(small[0].id)]


def test_releasing_a_server_wakes_one_box_and_it_gets_the_server(h):
    boxes = _waiting_boxes(h, 3, plan="basic")
    server = h.add_server()
    h.published.clear()
    pool.release_server(h.session, server.id)  # e.g. cleaned and back in the pool
    h.session.commit()
    assert h.jobs_for(boxes[0].id) == ["allocate_server"]
    assert h.jobs_for(boxes[1].id) == h.jobs_for(boxes[2].id) == []
    outcome = h.runner.run(boxes[0].id, "allocate_server")  # the woken task, no countdown
    assert outcome.kind == "succeeded" and h.box(boxes[0].id).server_id == server.id


def test_a_stale_countdown_of_a_waiting_box_is_dropped(h):
    (box,) = _waiting_boxes(h, 1)
    before = h.box(box.id).capacity_waits
    # The countdown scheduled before a wake (next_retry_at is later than now): dropped.
    assert h.runner.run(box.id, "allocate_server").kind == "stopped"
    assert h.box(box.id).capacity_waits == before  # no allocation attempt was made
    h.countdown_elapsed(box.id)  # its turn: it runs
    assert h.runner.run(box.id, "allocate_server").kind == "waiting"
    assert h.box(box.id).capacity_waits == before + 1


def test_a_redelivered_message_continues_the_chain_it_had_run_ahead_into(h):
    h.add_server()
    box = _subscribed_box(h)
    h.published.clear()
    # The worker finished the account and died before it claimed the allocation.
    assert engine.claim(h.session, box.id, "create_happy_account", lease_seconds=60) is (
        engine.Claim.RUN
    )
    h.session.commit()
    engine.finish(h.session, box.id, "create_happy_account", enqueue_next=False)
    h.session.commit()
    assert h.jobs_for(box.id) == []  # nobody enqueued the allocation
    outcome = h.runner.run(box.id, "create_happy_account")  # the redelivered message
    assert (outcome.kind, outcome.step) == ("succeeded", "mark_running")
    assert h.box(box.id).status == S.RUNNING


def test_one_task_runs_the_whole_provisioning_chain(h):
    h.add_server()
    box = _subscribed_box(h)
    h.published.clear()
    outcome = h.run(box.id)
    assert (outcome.kind, outcome.step) == ("succeeded", "mark_running")
    assert [step for step, _ in h.world.calls] == [
        "create_happy_account",
        "configure_server",
        "start_daemon",
        "mark_running",
    ]
    assert h.box(box.id).status == S.RUNNING
    assert h.jobs_for(box.id) == []  # no queue hop
