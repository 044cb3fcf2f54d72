"""The steps of the provisioning and teardown workflows.

A step is three phases so no database transaction stays open across a remote call:
``prepare`` (DB: read state; return None when the work is already done), ``execute``
(remote only: Happy, SSH; no session), ``record`` (DB: write the outcome). The runner in
``workers.provisioning`` claims the step (``provisioning.begin_step``), commits between the
phases and owns retries. Every ``prepare`` reads what is already true and skips done work,
which is what makes redeliveries and duplicates safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from app.config import Settings
from app.crypto import DecryptionError
from app.errors import (
    HostKeyMismatchError,
    HostUnreachableError,
    PermanentError,
    SSHAuthError,
    TransientError,
)
from app.integrations.happy import HappyAPI, HappyCredentials, HappyMachine
from app.integrations.ssh import BoxSession, SessionPool, SSHTarget
from app.models import Server, VibeBox
from app.services import happy_accounts, pool
from app.services.provisioning import (
    STEPS,
    TEARDOWN_STEPS,
    cancel_teardown,
    subscription_renewed,
)


class NoCapacityError(TransientError):
    """No available server fits the box's plan (yet)."""

    def __init__(self) -> None:
        super().__init__("no available server fits", safe_message="Waiting for a free server.")


class TeardownCanceledError(Exception):
    """The subscription was renewed before the teardown began: the box stays."""

    def __init__(self, resume_at: str | None) -> None:
        super().__init__("teardown canceled by a renewal")
        self.resume_at = resume_at  # provisioning step to resume, if it was interrupted


class ServerUnusableError(Exception):
    """The box's server failed at the SSH level: quarantine it and move the box."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.safe_message = getattr(cause, "safe_message", "The server could not be used.")


@dataclass
class StepContext:
    """What steps need from outside the database; tests pass fakes of the integrations."""

    settings: Settings
    happy: HappyAPI
    connect: Callable[[SSHTarget], BoxSession]
    heartbeat: Callable[[], None] = field(default=lambda: None)
    sessions: SessionPool | None = None  # reuse connections across steps of one box

    def on_box(self, target: SSHTarget, work: Callable[[BoxSession], Any]) -> Any:
        """Run ``work`` over SSH on ``target`` (a pooled connection when there is a pool)."""
        if self.sessions is not None:
            return self.sessions.run(target, work)
        with self.connect(target) as box_session:
            return work(box_session)


class Step:
    name: ClassVar[str]

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        """DB only. Return what ``execute`` needs, or None when nothing is left to do."""
        raise NotImplementedError

    def execute(self, plan: Any, ctx: StepContext) -> Any:
        """Remote work only (no session)."""
        return None

    def record(self, session: Session, box: VibeBox, result: Any, ctx: StepContext) -> None:
        """DB only: store the outcome."""


def wait_for_daemon(
    ctx: StepContext,
    creds: HappyCredentials,
    machine_id: str,
    predicate: Callable[[HappyMachine], bool],
    *,
    what: str = "running",
) -> HappyMachine:
    """Poll the Happy server (the honest source) until the box's machine satisfies
    ``predicate``; TransientError at the deadline."""
    settings = ctx.settings.provisioning
    deadline = time.monotonic() + settings.mark_running_timeout_seconds
    while True:
        machines = ctx.happy.list_machines(creds.token, creds.secret)
        for machine in machines:
            if machine.id == machine_id and predicate(machine):
                return machine
        if time.monotonic() >= deadline:
            raise TransientError(
                f"machine {machine_id} not {what} after {settings.mark_running_timeout_seconds}s",
                safe_message=f"The Happy daemon has not reported {what} yet.",
            )
        ctx.heartbeat()
        time.sleep(settings.mark_running_poll_seconds)


class CreateHappyAccount(Step):
    name = "create_happy_account"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        pending = happy_accounts.reserve_account(session, box.user_id, ctx.settings.encryption_key)
        return None if pending.token else pending

    def execute(self, plan: happy_accounts.PendingAccount, ctx: StepContext) -> str:
        # Upsert by public key: repeating this after a crash yields the same account.
        return ctx.happy.create_account(plan.secret)

    def record(self, session: Session, box: VibeBox, result: str, ctx: StepContext) -> None:
        happy_accounts.store_token(session, box.user_id, result, ctx.settings.encryption_key)


class AllocateServer(Step):
    name = "allocate_server"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        if pool.allocate_server(session, box) is None:
            raise NoCapacityError()
        return None


def _server_plan(
    session: Session, box: VibeBox, ctx: StepContext
) -> tuple[SSHTarget, HappyCredentials]:
    if box.server_id is None:
        raise PermanentError("box has no server", safe_message="Internal error: no server.")
    server = session.get(Server, box.server_id)
    creds = happy_accounts.get_credentials(session, box.user_id, ctx.settings.encryption_key)
    if server is None or creds is None:
        raise PermanentError("box lost its server or account", safe_message="Internal error.")
    try:
        return pool.ssh_target_for(server, ctx.settings.encryption_key), creds
    except DecryptionError as exc:  # ENCRYPTION_KEY changed: retrying cannot help
        raise PermanentError(
            f"server {server.id} credential does not decrypt", safe_message="Internal error."
        ) from exc


def _over_ssh(ctx: StepContext, target: SSHTarget, work: Callable[[BoxSession], Any]) -> Any:
    try:
        return ctx.on_box(target, work)
    except (HostUnreachableError, SSHAuthError, HostKeyMismatchError) as exc:
        raise ServerUnusableError(exc) from exc


class ConfigureServer(Step):
    name = "configure_server"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return _server_plan(session, box, ctx)

    def execute(self, plan: tuple[SSHTarget, HappyCredentials], ctx: StepContext) -> None:
        target, creds = plan
        # Atomic and idempotent: writing the same file again is harmless.
        _over_ssh(ctx, target, lambda s: s.write_credentials(creds))


class StartDaemon(Step):
    name = "start_daemon"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return _server_plan(session, box, ctx)[0]

    def execute(self, plan: SSHTarget, ctx: StepContext) -> str:
        def start(s: BoxSession) -> str | None:
            s.start_daemon()  # checks `daemon status` first
            return s.read_machine_id()

        machine_id = _over_ssh(ctx, plan, start)
        if not machine_id:
            raise TransientError(
                "daemon started but settings.json has no machineId yet",
                safe_message="Waiting for the Happy daemon to register.",
            )
        return str(machine_id)

    def record(self, session: Session, box: VibeBox, result: str, ctx: StepContext) -> None:
        box.happy_machine_id = result


class MarkRunning(Step):
    """Honest 'running': the Happy server lists this machine with daemonState running."""

    name = "mark_running"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        creds = happy_accounts.get_credentials(session, box.user_id, ctx.settings.encryption_key)
        if creds is None or not box.happy_machine_id:
            raise PermanentError(
                "mark_running before account/daemon", safe_message="Internal error."
            )
        return creds, box.happy_machine_id

    def execute(self, plan: tuple[HappyCredentials, str], ctx: StepContext) -> None:
        creds, machine_id = plan
        wait_for_daemon(ctx, creds, machine_id, lambda m: m.daemon_status == "running")


def _teardown_target(session: Session, box: VibeBox, ctx: StepContext) -> SSHTarget | None:
    if box.server_id is None:
        return None
    server = session.get(Server, box.server_id)
    if server is None:
        return None
    try:
        return pool.ssh_target_for(server, ctx.settings.encryption_key)
    except DecryptionError as exc:
        raise PermanentError(
            f"server {server.id} credential does not decrypt", safe_message="Internal error."
        ) from exc


def _over_ssh_retrying(
    ctx: StepContext, target: SSHTarget, work: Callable[[BoxSession], Any]
) -> Any:
    """Teardown must finish on *this* server: SSH trouble is retried, not moved around."""
    try:
        return ctx.on_box(target, work)
    except (HostUnreachableError, SSHAuthError, HostKeyMismatchError) as exc:
        raise TransientError(str(exc), safe_message=exc.safe_message) from exc


class StopDaemon(Step):
    name = "stop_daemon"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        if subscription_renewed(session, box):
            raise TeardownCanceledError(cancel_teardown(session, box))
        return _teardown_target(session, box, ctx)

    def execute(self, plan: SSHTarget, ctx: StepContext) -> None:
        _over_ssh_retrying(ctx, plan, lambda s: s.stop_daemon())


class WipeCredentials(Step):
    name = "wipe_credentials"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return _teardown_target(session, box, ctx)

    def execute(self, plan: SSHTarget, ctx: StepContext) -> None:
        _over_ssh_retrying(ctx, plan, lambda s: s.wipe_credentials())


class VerifyClean(Step):
    name = "verify_clean"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return _teardown_target(session, box, ctx)

    def execute(self, plan: SSHTarget, ctx: StepContext) -> None:
        problem = _over_ssh_retrying(ctx, plan, pool.cleanliness_problem)
        if problem:
            raise TransientError(problem, safe_message="The server is not clean yet.")


STEP_IMPLEMENTATIONS: dict[str, Step] = {
    step.name: step
    for step in (
        CreateHappyAccount(),
        AllocateServer(),
        ConfigureServer(),
        StartDaemon(),
        MarkRunning(),
        StopDaemon(),
        WipeCredentials(),
        VerifyClean(),
    )
}
assert tuple(STEP_IMPLEMENTATIONS) == STEPS + TEARDOWN_STEPS
