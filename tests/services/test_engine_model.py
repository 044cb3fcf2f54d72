"""A stateful model test of the lifecycle engine (Hypothesis ``RuleBasedStateMachine``).

Random interleavings of payments, step outcomes (success, transient and permanent faults,
an unusable server), worker crashes (a claimed step whose lease runs out), lost messages,
reconciler runs, control actions, server outages and recoveries, admin retry and terminate,
subscription expiry and renewal and new servers, against the real engine, allocation and
PostgreSQL. After every rule:

- no server is allocated to two live boxes, and every ``allocated`` server has its box;
- every box that is not settled is held by a step, scheduled, or has a message on its way;
- a terminated box holds no allocated server;
- progress never goes backwards within a run (a move or an admin retry starts a new one);
- the history (events, step rows) only grows.

Bounded in ``make test``; ``ENGINE_MODEL_EXAMPLES=500`` (and more steps) for a soak run.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import delete, func, select

from app.errors import ConflictError, InvalidStateError, NotFoundError
from app.models import BoxEvent, ProvisioningStep, Server, Subscription, User, VibeBox
from app.services.boxes import engine, lifecycle, status_document, statuses
from app.services.boxes.statuses import BoxStatus as S
from app.services.jobs import Job
from tests.services.engine_harness import OK, PERMANENT, TRANSIENT, UNUSABLE, Harness

# Minutes of generated interleavings: the full suite's, not the fast tier's (README: Tests).
pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("ENGINE_MODEL_EXAMPLES", "25"))
STEPS_PER_EXAMPLE = int(os.environ.get("ENGINE_MODEL_STEPS", "30"))
OUTCOMES = st.sampled_from([OK, OK, OK, TRANSIENT, PERMANENT, UNUSABLE])


def _model(session, app_settings):  # type: ignore[no-untyped-def]
    class EngineModel(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.h = Harness(session, app_settings)
            self.boxes: list[uuid.UUID] = []
            self.servers: list[uuid.UUID] = []
            self.users: list[uuid.UUID] = []
            self.subs: list[uuid.UUID] = []
            self.progress: dict[uuid.UUID, tuple[int, int, int]] = {}  # done, runs, phase
            self.history: dict[uuid.UUID, int] = {}
            for _ in range(2):
                self.servers.append(self.h.add_server().id)
            session.commit()

        def teardown(self) -> None:
            h = getattr(self, "h", None)
            if h is None:
                return
            session.rollback()
            session.execute(delete(VibeBox).where(VibeBox.id.in_(self.boxes)))
            session.execute(delete(Subscription).where(Subscription.id.in_(self.subs)))
            session.execute(delete(Server).where(Server.id.in_(self.servers)))
            session.execute(delete(User).where(User.id.in_(self.users)))
            session.commit()
            h.close()

        # --- rules --------------------------------------------------------------------------

        @rule(plan=st.sampled_from(["basic", "basic", "pro"]))
        def pay(self, plan: str) -> None:
            box = self.h.pay(plan)
            self.users.append(box.user_id)
            assert box.subscription_id is not None
            self.subs.append(box.subscription_id)
            self.boxes.append(box.id)

        @rule(cpu=st.sampled_from([2, 4]))
        def add_server(self, cpu: int) -> None:
            self.servers.append(self.h.add_server(cpu=cpu, ram=cpu * 2, disk=cpu * 20).id)
            from app.services import pool

            pool.wake_waiting_boxes(session)
            session.commit()

        @precondition(lambda self: self.boxes)
        @rule(data=st.data(), outcome=OUTCOMES)
        def work(self, data: st.DataObject, outcome: str) -> None:
            """A worker picks up the box's next step; the remote side does ``outcome``."""
            box_id = data.draw(st.sampled_from(self.boxes))
            name = self.h.next_step(box_id)
            if name is None:
                return
            self.h.world.script[name] = [outcome]
            self.h.run(box_id, name)

        @precondition(lambda self: self.boxes)
        @rule(data=st.data())
        def crash(self, data: st.DataObject) -> None:
            """A worker claims the box's step and dies (SIGKILL): the lease will run out."""
            box_id = data.draw(st.sampled_from(self.boxes))
            name = self.h.next_step(box_id)
            if name is None:
                return
            engine.claim(session, box_id, name, lease_seconds=3600)
            session.commit()

        @rule()
        def time_passes_and_the_reconciler_runs(self) -> None:
            self.h.expire_leases()
            self.h.age_everything()
            for repair in engine.stranded(session, older_than=60):
                engine.resend(session, repair)
            session.commit()

        @precondition(lambda self: self.boxes)
        @rule(data=st.data(), action=st.sampled_from(["start", "stop", "restart"]))
        def owner_action(self, data: st.DataObject, action: str) -> None:
            box_id = data.draw(st.sampled_from(self.boxes))
            box = self.h.box(box_id)
            try:
                engine.request_action(session, box_id, owner_id=box.user_id, action=action)
                session.commit()
            except (ConflictError, InvalidStateError, NotFoundError):
                session.rollback()

        @precondition(lambda self: self.servers)
        @rule(data=st.data(), ok=st.booleans())
        def probe(self, data: st.DataObject, ok: bool) -> None:
            server_id = data.draw(st.sampled_from(self.servers))
            lifecycle.record_server_probe_for_box(
                session, server_id, ok=ok, latency_ms=1, error=None, unhealthy_after=2
            )
            session.commit()

        @precondition(lambda self: self.boxes)
        @rule(data=st.data())
        def admin_retry(self, data: st.DataObject) -> None:
            box_id = data.draw(st.sampled_from(self.boxes))
            try:
                engine.retry_failed_box(session, box_id)
                session.commit()
            except InvalidStateError:
                session.rollback()

        @precondition(lambda self: self.boxes)
        @rule(data=st.data())
        def admin_terminate(self, data: st.DataObject) -> None:
            box_id = data.draw(st.sampled_from(self.boxes))
            engine.start_teardown(session, box_id, reason="admin", cancellable=False)
            session.commit()

        @precondition(lambda self: self.subs)
        @rule(data=st.data(), renew_after=st.booleans())
        def expire(self, data: st.DataObject, renew_after: bool) -> None:
            sub_id = data.draw(st.sampled_from(self.subs))
            sub = session.get(Subscription, sub_id)
            assert sub is not None
            now = datetime.now(UTC)
            sub.current_period_start = now - timedelta(days=40)
            sub.current_period_end = now - timedelta(days=5)
            session.commit()
            lifecycle.expire_subscription(session, sub_id, grace_seconds=0)
            session.commit()
            if renew_after:  # the renewal lands before the teardown begins
                sub = session.get(Subscription, sub_id)
                sub.status = "active"
                sub.current_period_end = now + timedelta(days=30)
                session.commit()

        @precondition(lambda self: self.servers)
        @rule(data=st.data())
        def server_cleaned(self, data: st.DataObject) -> None:
            from app.services import pool

            server_id = data.draw(st.sampled_from(self.servers))
            pool.finish_cleaning(session, server_id)
            session.commit()

        # --- invariants -----------------------------------------------------------------------

        @invariant()
        def one_live_box_per_server_and_every_allocated_server_has_one(self) -> None:
            if not hasattr(self, "h"):
                return
            live = self.h.servers_of_live_boxes()
            assert len(live) == len(set(live))
            allocated = session.scalars(
                select(Server.id).where(Server.state == "allocated", Server.id.in_(self.servers))
            ).all()
            for server_id in allocated:
                holders = session.scalar(
                    select(func.count())
                    .select_from(VibeBox)
                    .where(VibeBox.server_id == server_id, VibeBox.status != "terminated")
                )
                assert holders == 1, f"allocated server {server_id} has {holders} live boxes"

        @invariant()
        def nothing_is_stranded(self) -> None:
            if not hasattr(self, "h"):
                return
            on_the_way = {j.box_id for j in self.h.published if isinstance(j, Job)}
            for box_id in self.boxes:
                box = self.h.box(box_id)
                if box.status in statuses.SETTLED:
                    continue
                held = any(s.state == "running" for s in box.steps)
                scheduled = box.next_retry_at is not None
                assert held or scheduled or str(box_id) in on_the_way, (
                    f"box {box_id} is {box.status} at {box.step} and nobody moves it"
                )

        @invariant()
        def history_only_grows_and_progress_only_moves_forward(self) -> None:
            if not hasattr(self, "h"):
                return
            for box_id in self.boxes:
                box = self.h.box(box_id)
                events = session.scalars(
                    select(BoxEvent.kind).where(BoxEvent.vibebox_id == box_id)
                ).all()
                rows = session.scalar(
                    select(func.count())
                    .select_from(ProvisioningStep)
                    .where(ProvisioningStep.vibebox_id == box_id)
                )
                size = len(events) + (rows or 0)
                assert size >= self.history.get(box_id, 0), "history shrank"
                self.history[box_id] = size
                runs = sum(1 for k in events if k in ("moved", "retried", "terminate"))
                phase = 1 if box.status in (S.TERMINATING, S.TERMINATED) else 0
                done, _ = status_document.progress(box)
                before = self.progress.get(box_id)
                if before is not None and before[1:] == (runs, phase):
                    assert done >= before[0], f"progress went back {before[0]} -> {done}"
                self.progress[box_id] = (done, runs, phase)

        @invariant()
        def a_terminated_box_holds_no_allocated_server(self) -> None:
            if not hasattr(self, "h"):
                return
            for box_id in self.boxes:
                box = self.h.box(box_id)
                if box.status == S.TERMINATED and box.server_id is not None:
                    server = session.get(Server, box.server_id)
                    holders = session.scalar(
                        select(func.count())
                        .select_from(VibeBox)
                        .where(VibeBox.server_id == box.server_id, VibeBox.status != "terminated")
                    )
                    assert server is None or server.state != "allocated" or holders == 1

    return EngineModel


@pytest.mark.timeout(600)
def test_engine_model(session, settings_for_model):  # type: ignore[no-untyped-def]
    model = _model(session, settings_for_model)
    model.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS_PER_EXAMPLE,
        deadline=None,
        derandomize=os.environ.get("ENGINE_MODEL_RANDOM") is None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    model.TestCase().runTest()


@pytest.fixture
def settings_for_model(settings):  # type: ignore[no-untyped-def]
    return settings
