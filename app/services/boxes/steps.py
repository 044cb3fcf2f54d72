"""The steps of the provisioning and teardown workflows.

Over 400 lines on purpose: the eight steps share the phase protocol, the box's plan
(``box_plan``/``BoxPlan``), the daemon helpers and ``STEP_IMPLEMENTATIONS``, whose order is
checked against the workflows at import; read top to bottom they are the whole remote side
of a box's life. (The owner's start/stop/restart is ``control.py``.)

A step is three phases so no database transaction stays open across a remote call:
``prepare`` (DB: read state; return None when the work is already done), ``execute``
(remote only: Happy, SSH; no session), ``record`` (DB: write the outcome). The engine's
runner (``app.services.boxes.runner.StepRunner``) claims the step, commits between the phases
and owns retries. Every ``prepare`` reads what is already true and skips done work,
which is what makes redeliveries and duplicates safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
from app.integrations.box_host import (
    SET_HAPPY_URL,
    BoxEnvironmentError,
    BoxHost,
    BoxUser,
    box_gecos,
    classify,
    describe,
)
from app.integrations.happy import HappyAPI, HappyCredentials, HappyMachine
from app.integrations.ssh import BoxSession, SessionPool, SSHTarget
from app.models import Server, VibeBox
from app.services import pool
from app.services.boxes import happy_accounts
from app.services.boxes.provisioning import STEPS, TEARDOWN_STEPS


class NoCapacityError(TransientError):
    """No available server fits the box's plan (yet); the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"no capacity: {reason}", safe_message=reason)


class TeardownCanceledError(Exception):
    """The subscription was renewed before its expiry teardown began: the box stays."""

    def __init__(self) -> None:
        super().__init__("teardown cancelled by a renewal")


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
    # Store a refreshed Happy token at once (the runner commits it): a token the Happy
    # server rejected is replaced on the box and in the database together.
    save_token: Callable[[str, str], None] = field(default=lambda token, rejected: None)
    # A Happy client for another Happy server URL (a region's own server, HAPPY_SERVER_URLS);
    # ``happy`` talks to HAPPY_SERVER_URL. Without it every region uses ``happy``.
    happy_clients: Callable[[str], HappyAPI] | None = None
    sleep: Callable[[float], None] = field(default=time.sleep)  # tests count the waits
    # Daemon pids seen alive as their box user by ``bring_up_daemon`` in this task (box user
    # -> pid): ``mark_running``, run ahead right after ``start_daemon``, needs no second
    # SSH round trip to know that pid is alive.
    daemon_pids: dict[str, int] = field(default_factory=dict)

    def happy_at(self, region: str | None) -> HappyAPI:
        """The Happy server of ``region`` (boxes of a region have their account there)."""
        url = self.settings.happy_url_for(region)
        if self.happy_clients is None or url == self.settings.happy_server_url:
            return self.happy
        return self.happy_clients(url)

    def on_box(self, target: SSHTarget, work: Callable[[BoxSession], Any]) -> Any:
        """Run ``work`` over SSH on ``target`` (a pooled connection when there is a pool)."""
        if self.sessions is not None:
            return self.sessions.run(target, work)
        with self.connect(target) as box_session:
            return work(box_session)

    def on_host(
        self, target: SSHTarget, work: Callable[[BoxHost], Any], *, region: str | None = None
    ) -> Any:
        """Like :meth:`on_box`, with the server's box-user operations. A box of a region
        with its own Happy server (HAPPY_SERVER_URLS) gets that URL in its daemon's
        environment; otherwise the login's HAPPY_SERVER_URL, else the backend's."""
        default = self.settings.happy_server_url
        forced = self.settings.regions.configured_happy_url(region)
        return self.on_box(
            target,
            lambda s: work(BoxHost(s, default_happy_server_url=default, happy_server_url=forced)),
        )


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


def poll_intervals(first: float, cap: float) -> Iterator[float]:
    """The waits between detection polls: ``first``, doubling up to ``cap`` (no 1 s floor
    for a daemon that registers at once; a slow one costs one request per ``cap``)."""
    delay = min(first, cap) if first > 0 else cap
    while True:
        yield delay
        delay = min(delay * 2, cap)


def wait_for_daemon(
    ctx: StepContext,
    creds: HappyCredentials,
    machine_id: str,
    predicate: Callable[[HappyMachine], bool],
    *,
    what: str = "running",
    region: str | None = None,
    confirm: Callable[[HappyMachine], bool] | None = None,
) -> HappyMachine:
    """Poll the Happy server (the honest source) until the box's machine satisfies
    ``predicate`` (and ``confirm``, e.g. a check on the box, when given); TransientError at
    the deadline. Polls after a short first interval that doubles up to
    MARK_RUNNING_POLL_SECONDS."""
    settings = ctx.settings.provisioning
    deadline = time.monotonic() + settings.mark_running_timeout_seconds
    intervals = poll_intervals(
        settings.mark_running_first_poll_seconds, settings.mark_running_poll_seconds
    )
    while True:
        machines = ctx.happy_at(region).list_machines(creds.token, creds.secret)
        for machine in machines:
            found = machine.id == machine_id and predicate(machine)
            if found and (confirm is None or confirm(machine)):
                return machine
        if time.monotonic() >= deadline:
            raise TransientError(
                f"machine {machine_id} not {what} after {settings.mark_running_timeout_seconds}s",
                safe_message=f"The Happy daemon has not reported {what} yet.",
            )
        ctx.heartbeat()
        ctx.sleep(next(intervals))


class CreateHappyAccount(Step):
    name = "create_happy_account"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        pending = happy_accounts.reserve_account(
            session,
            box.user_id,
            ctx.settings.encryption_key,
            server_url=ctx.settings.happy_realm(box.region),
        )
        return None if pending.token else (pending, box.region)

    def execute(
        self, plan: tuple[happy_accounts.PendingAccount, str | None], ctx: StepContext
    ) -> str:
        pending, region = plan
        # Upsert by public key: repeating this after a crash yields the same account. A box
        # of a region gets its account on that region's Happy server.
        return ctx.happy_at(region).create_account(pending.secret)

    def record(self, session: Session, box: VibeBox, result: str, ctx: StepContext) -> None:
        happy_accounts.store_token(
            session,
            box.user_id,
            result,
            ctx.settings.encryption_key,
            server_url=ctx.settings.happy_realm(box.region),
        )


class AllocateServer(Step):
    name = "allocate_server"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        if pool.allocate_server(session, box) is None:
            raise NoCapacityError(pool.capacity_shortfall(session, box.plan_id, region=box.region))
        return None


@dataclass(frozen=True)
class BoxPlan:
    """Where a box lives and as whom: what the SSH steps and control actions need."""

    box_id: str
    server_id: str
    target: SSHTarget
    user: BoxUser
    creds: HappyCredentials
    region: str | None = None


def box_user_of(box: VibeBox, ctx: StepContext) -> BoxUser:
    """The box's Unix user on its current server: named once per (box, server) from both
    ids and kept on the row, so a box moved to another server never meets its old user."""
    if box.unix_user is None:
        assert box.server_id is not None
        suffix = box.id.hex[:8] + box.server_id.hex[:4]
        box.unix_user = ctx.settings.provisioning.box_user_prefix + suffix
    return BoxUser(box.unix_user, box.unix_uid)


def box_plan(session: Session, box: VibeBox, ctx: StepContext) -> BoxPlan:
    target, creds = _server_plan(session, box, ctx)
    assert box.server_id is not None  # _server_plan
    return BoxPlan(
        str(box.id), str(box.server_id), target, box_user_of(box, ctx), creds, box.region
    )


def _server_plan(
    session: Session, box: VibeBox, ctx: StepContext
) -> tuple[SSHTarget, HappyCredentials]:
    if box.server_id is None:
        raise PermanentError("box has no server", safe_message="Internal error: no server.")
    server = session.get(Server, box.server_id)
    creds = happy_accounts.get_credentials(
        session,
        box.user_id,
        ctx.settings.encryption_key,
        server_url=ctx.settings.happy_realm(box.region),
    )
    if server is None or creds is None:
        raise PermanentError("box lost its server or account", safe_message="Internal error.")
    try:
        return pool.ssh_target_for(server, ctx.settings.encryption_key), creds
    except DecryptionError as exc:  # ENCRYPTION_KEY changed: retrying cannot help
        raise PermanentError(
            f"server {server.id} credential does not decrypt", safe_message="Internal error."
        ) from exc


def _over_ssh_host(
    ctx: StepContext,
    target: SSHTarget,
    work: Callable[[BoxHost], Any],
    *,
    region: str | None = None,
) -> Any:
    """SSH trouble, or a server that cannot host boxes, moves the box elsewhere."""
    try:
        return ctx.on_host(target, work, region=region)
    except (HostUnreachableError, SSHAuthError, HostKeyMismatchError, BoxEnvironmentError) as exc:
        raise ServerUnusableError(exc) from exc


class ConfigureServer(Step):
    """Create the box's own Unix user and write its Happy credentials as that user."""

    name = "configure_server"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return box_plan(session, box, ctx)

    def execute(self, plan: BoxPlan, ctx: StepContext) -> tuple[int, str]:
        def configure(host: BoxHost) -> tuple[int, str]:
            operator = host.check_operator()
            problem = operator.problem()
            if problem is not None:
                raise BoxEnvironmentError(
                    f"ssh {host.where}: {problem}",
                    safe_message=f"The server cannot host boxes: {problem}.",
                )
            uid = host.ensure_user(plan.user, box_gecos(plan.box_id, plan.server_id))
            # Atomic and idempotent: writing the same file again is harmless.
            host.write_credentials(BoxUser(plan.user.name, uid), plan.creds)
            return uid, operator.authorized_keys_digest

        return _over_ssh_host(ctx, plan.target, configure, region=plan.region)

    def record(
        self, session: Session, box: VibeBox, result: tuple[int, str], ctx: StepContext
    ) -> None:
        box.unix_uid, digest = result
        if box.login_keys_digest is None:
            box.login_keys_digest = digest


def bring_up_daemon(
    host: BoxHost,
    user: BoxUser,
    creds: HappyCredentials,
    ctx: StepContext,
    *,
    region: str | None = None,
) -> tuple[bool, str | None]:
    """Start the box user's daemon unless it runs, diagnosing a failed start before
    classifying it. Returns (started now, machine id). Raises BoxEnvironmentError (the
    server cannot host boxes: quarantine and move), TransientError (retry)."""
    timeout = ctx.settings.provisioning.ssh_command_timeout_seconds
    outcome = host.ensure_daemon(user, timeout=timeout)
    if outcome.ok:
        if outcome.liveness.pid is not None:
            ctx.daemon_pids[user.name] = outcome.liveness.pid
        return outcome.started, outcome.machine_id
    evidence = host.collect_evidence(user, creds)
    found = describe(evidence)
    kind = classify(evidence)
    if kind == "environment":
        fix = f"; {SET_HAPPY_URL}" if evidence.reach.startswith("unreachable") else ""
        raise BoxEnvironmentError(
            f"ssh {host.where}: daemon of {user.name} did not start: {found}{fix}",
            safe_message=f"The server could not run the Happy daemon: {found}. "
            "It was taken out of the pool.",
        )
    if kind == "credentials":
        host.write_credentials(user, creds)
    elif _token_rejected(ctx, creds, region):
        fresh = HappyCredentials(creds.secret, ctx.happy_at(region).create_account(creds.secret))
        ctx.save_token(fresh.token, creds.token)
        host.write_credentials(user, fresh)
        found = "the Happy server rejected the box's token; a new one was issued"
    raise TransientError(
        f"ssh {host.where}: daemon of {user.name} did not start: {found}",
        safe_message=f"The Happy daemon did not start: {found}.",
    )


def _token_rejected(ctx: StepContext, creds: HappyCredentials, region: str | None) -> bool:
    """Ask the Happy server whether the token still works (401 -> rejected)."""
    try:
        ctx.happy_at(region).get_profile(creds.token)
    except PermanentError:
        return True
    except TransientError:
        return False
    return False


class StartDaemon(Step):
    name = "start_daemon"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return box_plan(session, box, ctx)

    def execute(self, plan: BoxPlan, ctx: StepContext) -> str:
        _, machine_id = _over_ssh_host(
            ctx,
            plan.target,
            lambda host: bring_up_daemon(host, plan.user, plan.creds, ctx, region=plan.region),
            region=plan.region,
        )
        if not machine_id:
            raise TransientError(
                "daemon started but settings.json has no machineId yet",
                safe_message="Waiting for the Happy daemon to register.",
            )
        return str(machine_id)

    def record(self, session: Session, box: VibeBox, result: str, ctx: StepContext) -> None:
        box.happy_machine_id = result


@dataclass(frozen=True)
class RunningPlan:
    """What ``mark_running`` checks: the machine on the Happy server, the daemon on the box."""

    creds: HappyCredentials
    machine_id: str
    region: str | None
    box: BoxPlan | None  # None: a box without a server row (checked by Happy only)


def reported_pid(machine: HappyMachine) -> int | None:
    pid = (machine.daemon_state or {}).get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


class MarkRunning(Step):
    """Honest 'running': the Happy server lists this machine with daemonState running, and
    the pid it reports is the pid in the box user's daemon.state.json, alive as that user.

    The state file is written before the daemon registers, so the box alone proves nothing;
    the Happy server alone keeps a dead daemon's last report forever. Both are needed. A
    daemon that died after registering is started again once per attempt (its new pid must
    then be reported)."""

    name = "mark_running"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        creds = happy_accounts.get_credentials(
            session,
            box.user_id,
            ctx.settings.encryption_key,
            server_url=ctx.settings.happy_realm(box.region),
        )
        if creds is None or not box.happy_machine_id:
            raise PermanentError(
                "mark_running before account/daemon", safe_message="Internal error."
            )
        on_box = box_plan(session, box, ctx) if box.server_id is not None else None
        return RunningPlan(creds, box.happy_machine_id, box.region, on_box)

    def execute(self, plan: RunningPlan, ctx: StepContext) -> None:
        restarted = False

        def alive_on_box(machine: HappyMachine) -> bool:
            nonlocal restarted
            if plan.box is None:
                return True
            box = plan.box
            reported = reported_pid(machine)
            if reported is not None and ctx.daemon_pids.get(box.user.name) == reported:
                return True  # this task just saw that pid alive as the box user
            liveness = _over_ssh_host(
                ctx, box.target, lambda host: host.liveness(box.user), region=box.region
            )
            if liveness.alive:
                # Alive, but the report may still be an earlier daemon's: wait for ours. (A
                # report without a pid, unlike happy-coder 0.13's, cannot be matched.)
                return reported is None or reported == liveness.pid
            if restarted:
                raise TransientError(
                    f"daemon of {box.user.name} died again (pid {liveness.pid})",
                    safe_message="The Happy daemon stopped after it started; retrying.",
                )
            restarted = True
            _over_ssh_host(
                ctx,
                box.target,
                lambda host: bring_up_daemon(host, box.user, box.creds, ctx, region=box.region),
                region=box.region,
            )
            ctx.daemon_pids.pop(box.user.name, None)  # it died once: look at the box again
            return False

        wait_for_daemon(
            ctx,
            plan.creds,
            plan.machine_id,
            lambda m: m.daemon_status == "running",
            region=plan.region,
            confirm=alive_on_box,
        )


@dataclass(frozen=True)
class TeardownPlan:
    target: SSHTarget
    user: BoxUser | None  # None: a box from before per-box users (it ran as the login)
    login_keys_digest: str | None


def _teardown_plan(session: Session, box: VibeBox, ctx: StepContext) -> TeardownPlan | None:
    if box.server_id is None:
        return None
    server = session.get(Server, box.server_id)
    if server is None:
        return None
    try:
        target = pool.ssh_target_for(server, ctx.settings.encryption_key)
    except DecryptionError as exc:
        raise PermanentError(
            f"server {server.id} credential does not decrypt", safe_message="Internal error."
        ) from exc
    user = BoxUser(box.unix_user, box.unix_uid) if box.unix_user else None
    return TeardownPlan(target, user, box.login_keys_digest)


def _over_ssh_retrying(ctx: StepContext, target: SSHTarget, work: Callable[[BoxHost], Any]) -> Any:
    """Teardown must finish on *this* server: SSH trouble is retried, not moved around."""
    try:
        return ctx.on_host(target, work)
    except (HostUnreachableError, SSHAuthError, HostKeyMismatchError) as exc:
        raise TransientError(str(exc), safe_message=exc.safe_message) from exc


class StopDaemon(Step):
    """End the daemon and every session of the box user: the customer's access ends."""

    name = "stop_daemon"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        from app.services.boxes import engine

        if engine.teardown_cancelled_by_renewal(session, box):
            engine.cancel_teardown(session, box)
            raise TeardownCanceledError()
        if engine.payment_being_applied(session, box):
            raise TransientError(
                f"box {box.id}: a payment of its subscription is being applied",
                safe_message="Waiting for a payment of this subscription to be applied.",
            )
        return _teardown_plan(session, box, ctx)

    def execute(self, plan: TeardownPlan, ctx: StepContext) -> None:
        _on_box_user(ctx, plan, BoxHost.end_all_processes)


def _on_box_user(
    ctx: StepContext, plan: TeardownPlan, act: Callable[[BoxHost, BoxUser], object]
) -> None:
    """A teardown action on the box's Unix user over SSH (retried on the way); a box from
    before box users existed has its pool login scrubbed instead."""

    def run(host: BoxHost) -> None:
        if plan.user is None:
            legacy_login_scrub(host.session)
        else:
            act(host, plan.user)

    _over_ssh_retrying(ctx, plan.target, run)


class WipeCredentials(Step):
    """Delete the box user: its home (credentials included), crontab, at jobs, units,
    lingering and its files in the shared writable places."""

    name = "wipe_credentials"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return _teardown_plan(session, box, ctx)

    def execute(self, plan: TeardownPlan, ctx: StepContext) -> None:
        _on_box_user(ctx, plan, BoxHost.remove_user)


class VerifyClean(Step):
    """Prove by uid that nothing of the box user remains (and the login is untouched)."""

    name = "verify_clean"

    def prepare(self, session: Session, box: VibeBox, ctx: StepContext) -> Any | None:
        return _teardown_plan(session, box, ctx)

    def execute(self, plan: TeardownPlan, ctx: StepContext) -> None:
        def verify(host: BoxHost) -> str | None:
            if plan.user is None:
                return pool.cleanliness_problem(host.session)
            return host.leftovers(plan.user, login_keys_digest=plan.login_keys_digest)

        problem = _over_ssh_retrying(ctx, plan.target, verify)
        if problem:
            raise TransientError(problem, safe_message="The server is not clean yet.")


def legacy_login_scrub(session: BoxSession) -> None:
    """Boxes configured before per-box users ran as the pool login: stop its daemon and
    wipe its ~/.happy (idempotent; nothing to do on a server that never had one)."""
    session.stop_daemon()
    session.wipe_credentials()


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
assert tuple(STEP_IMPLEMENTATIONS) == STEPS + TEARDOWN_STEPS  # + control, in engine
