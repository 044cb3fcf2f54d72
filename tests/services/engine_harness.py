"""A harness for the lifecycle engine: the real engine, the real database and the real
allocation, with the remote parts of each step replaced by a scripted world.

Steps keep their real ``prepare``/``record`` where those are database-only (allocation,
the expiry teardown's renewal check); their remote ``execute`` asks ``World`` what happens
next: success, a transient fault, a permanent fault, or a server that cannot be used.
Published jobs are collected, not sent: the harness plays the worker.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.crypto import encrypt_str
from app.errors import HostUnreachableError, PermanentError, TransientError
from app.models import ProvisioningStep, Server, Subscription, VibeBox
from app.services import jobs
from app.services.boxes import engine, provisioning, runner, statuses
from app.services.boxes.steps import (
    AllocateServer,
    ServerUnusableError,
    Step,
    StepContext,
    StopDaemon,
)
from app.services.jobs import Job
from app.timeutil import utcnow

OK, TRANSIENT, PERMANENT, UNUSABLE = "ok", "transient", "permanent", "unusable"


@dataclass
class World:
    """What the remote side does next, per step name (default: succeed)."""

    script: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    calls: list[tuple[str, uuid.UUID]] = field(default_factory=list)

    def next(self, step: str) -> str:
        queue = self.script[step]
        return queue.pop(0) if queue else OK

    def act(self, step: str, box_id: uuid.UUID) -> None:
        self.calls.append((step, box_id))
        outcome = self.next(step)
        if outcome == TRANSIENT:
            raise TransientError(f"{step}: injected", safe_message=f"{step} failed for now.")
        if outcome == PERMANENT:
            raise PermanentError(f"{step}: injected", safe_message=f"{step} cannot work.")
        if outcome == UNUSABLE:
            cause = HostUnreachableError(f"{step}: injected", safe_message="The server is gone.")
            raise ServerUnusableError(cause)


class Scripted(Step):
    """A step whose remote work is scripted; server steps need a server."""

    def __init__(self, name: str, world: World) -> None:
        self.name = name  # type: ignore[misc]
        self.world = world

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        if self.name in engine.SERVER_STEPS and box.server_id is None:
            raise PermanentError("no server", safe_message="Internal error: no server.")
        return box.id

    def execute(self, plan: Any, ctx: StepContext) -> None:
        self.world.act(self.name, plan)


class ScriptedAllocate(AllocateServer):
    pass


class ScriptedStop(StopDaemon):
    def __init__(self, world: World) -> None:
        self.world = world

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        super().prepare(session, box, ctx)  # the real renewal check
        return box.id

    def execute(self, plan: Any, ctx: StepContext) -> None:
        self.world.act(self.name, plan)


def steps_for(world: World) -> dict[str, Step]:
    found: dict[str, Step] = {}
    for name in engine.POSITIONS:
        if name == "allocate_server":
            found[name] = ScriptedAllocate()
        elif name == "stop_daemon":
            found[name] = ScriptedStop(world)
        else:
            found[name] = Scripted(name, world)
    return found


class Harness:
    """The engine with a scripted world; ``published`` are the jobs the code enqueued."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.world = World()
        self.published: list[Any] = []
        jobs.set_publisher(self.published.append)
        self.ctx = StepContext(settings=settings, happy=None, connect=None)  # type: ignore[arg-type]
        self.runner = runner.StepRunner(session, self.ctx, steps_for(self.world))

    def add_server(self, cpu: int = 2, ram: int = 4, disk: int = 40) -> Server:
        server_id = uuid.uuid4()
        server = Server(
            id=server_id,
            host=f"10.{server_id.int % 250}.0.1",
            ssh_port=22 + server_id.int % 60000,
            ssh_user="vibe",
            auth_method="password",
            credential_encrypted=encrypt_str(
                self.settings.encryption_key, "pw", aad=f"server-credential:{server_id}"
            ),
            host_key_fingerprint="SHA256:" + "A" * 43,
            cpu_cores=cpu,
            ram_gb=ram,
            disk_gb=disk,
            state="available",
        )
        self.session.add(server)
        self.session.flush()
        return server

    def pay(self, plan: str = "basic") -> VibeBox:
        """A new user with an active subscription and its new (pending) box."""
        from tests.factories import UserFactory

        user = UserFactory()
        now = datetime.now(UTC)
        sub = Subscription(
            id=uuid.uuid4(),
            user_id=user.id,
            plan_id=plan,
            status="active",
            billing_cycle="monthly",
            payment_provider="dev",
            current_period_start=now - timedelta(days=1),
            current_period_end=now + timedelta(days=30),
        )
        self.session.add(sub)
        self.session.flush()
        box = provisioning.create_vibebox(
            self.session, user_id=user.id, plan_id=plan, subscription_id=sub.id
        )
        self.session.commit()
        return box

    def next_step(self, box_id: uuid.UUID) -> str | None:
        box = self.box(box_id)
        wf = engine.workflow_for_status(box.status)
        if wf is None:
            return None
        return engine.first_unfinished(box, wf) or wf.steps[-1]

    def run(self, box_id: uuid.UUID, step: str | None = None) -> runner.Outcome:
        """Run the box's next step (and what it runs ahead into), as the countdown of its
        retry or capacity wait firing now: the harness does not wait out delays."""
        name = step or self.next_step(box_id)
        assert name is not None, "the box is settled"
        self.countdown_elapsed(box_id)
        self.session.commit()
        return self.runner.run(box_id, name)

    def countdown_elapsed(self, box_id: uuid.UUID) -> None:
        box = self.box(box_id)
        if box.next_retry_at is not None and box.next_retry_at > utcnow():
            box.next_retry_at = utcnow()
            self.session.commit()

    def drive(self, box_id: uuid.UUID, limit: int = 40) -> VibeBox:
        """Play the worker until the box settles (or ``limit`` runs)."""
        for _ in range(limit):
            if self.box(box_id).status in statuses.SETTLED:
                return self.box(box_id)
            self.run(box_id)
        return self.box(box_id)

    def box(self, box_id: uuid.UUID) -> VibeBox:
        box = self.session.get(VibeBox, box_id, populate_existing=True)
        assert box is not None
        self.session.refresh(box, attribute_names=["steps"])
        return box

    def jobs_for(self, box_id: uuid.UUID) -> list[str]:
        return [j.step for j in self.published if isinstance(j, Job) and j.box_id == str(box_id)]

    def expire_leases(self) -> None:
        """Every running step's worker is presumed dead (its lease ran out)."""
        self.session.execute(
            update(ProvisioningStep)
            .where(ProvisioningStep.state == "running")
            .values(updated_at=utcnow() - timedelta(days=1))
        )
        self.session.commit()

    def age_everything(self) -> None:
        """Time passes: scheduled retries are due, nothing moved recently."""
        past = utcnow() - timedelta(days=1)
        self.session.execute(
            update(VibeBox).where(VibeBox.next_retry_at.is_not(None)).values(next_retry_at=past)
        )
        self.session.execute(update(VibeBox).values(updated_at=past))
        self.session.commit()

    def servers_of_live_boxes(self) -> list[uuid.UUID]:
        return list(
            self.session.scalars(
                select(VibeBox.server_id).where(
                    VibeBox.server_id.is_not(None), VibeBox.status != "terminated"
                )
            )
        )

    def close(self) -> None:
        jobs.set_publisher(None)
