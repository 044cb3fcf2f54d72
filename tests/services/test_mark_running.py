"""Detecting a running daemon (``mark_running``): short first poll with backoff, and the
honest check (the Happy server lists the machine running with the pid that is alive on the
box as the box user). Fakes for the Happy server and the box; no sleeping, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from app.config import Settings
from app.errors import TransientError
from app.integrations.box_host import BoxUser, DaemonLiveness, DaemonStart
from app.integrations.happy import HappyCredentials, HappyMachine
from app.services.boxes.steps import BoxPlan, MarkRunning, RunningPlan, StepContext, poll_intervals

MACHINE = "machine-1"
CREDS = HappyCredentials(b"\xfb" * 32, "token")
USER = BoxUser("vb-test", 1234)


def running(pid: int | None) -> list[HappyMachine]:
    state = {"status": "running"} if pid is None else {"status": "running", "pid": pid}
    return [HappyMachine(MACHINE, True, None, state)]


@dataclass
class FakeHappy:
    """Each poll returns the next scripted machine list (the last one repeats)."""

    replies: list[list[HappyMachine]]
    polls: int = 0

    def list_machines(self, token: str, secret: bytes) -> list[HappyMachine]:
        reply = self.replies[min(self.polls, len(self.replies) - 1)]
        self.polls += 1
        return reply


@dataclass
class FakeHost:
    """The box: the liveness of the pid in daemon.state.json, scripted per check."""

    liveness_replies: list[DaemonLiveness]
    restarted_pid: int = 0
    checks: int = 0
    starts: int = 0

    def liveness(self, user: BoxUser) -> DaemonLiveness:
        reply = self.liveness_replies[min(self.checks, len(self.liveness_replies) - 1)]
        self.checks += 1
        return reply

    def ensure_daemon(self, user: BoxUser, *, timeout: float) -> DaemonStart:
        self.starts += 1
        return DaemonStart(True, 0, "", DaemonLiveness(True, self.restarted_pid), MACHINE)


@dataclass
class FakeContext(StepContext):
    host: Any = None
    sleeps: list[float] = field(default_factory=list)

    def on_host(self, target: Any, work: Any, *, region: str | None = None) -> Any:
        return work(self.host)


def make(settings: Settings, happy: FakeHappy, host: FakeHost) -> tuple[FakeContext, RunningPlan]:
    p = replace(
        settings.provisioning,
        mark_running_first_poll_seconds=0.05,
        mark_running_poll_seconds=1.0,
        mark_running_timeout_seconds=3600,  # never reached: the scripts end the waits
    )
    ctx = FakeContext(
        settings=replace(settings, provisioning=p),
        happy=happy,  # type: ignore[arg-type]
        connect=None,  # type: ignore[arg-type]
        host=host,
    )
    ctx.sleep = ctx.sleeps.append
    box = BoxPlan("box", "server", None, USER, CREDS)  # type: ignore[arg-type]
    return ctx, RunningPlan(CREDS, MACHINE, None, box)


def test_poll_intervals_start_short_and_double_up_to_the_cap():
    intervals = poll_intervals(0.05, 1.0)
    assert [round(next(intervals), 3) for _ in range(8)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
        1.0,
    ]


def test_a_daemon_that_registers_at_once_is_detected_on_the_first_poll(settings):
    ctx, plan = make(settings, FakeHappy([running(42)]), FakeHost([DaemonLiveness(True, 42)]))
    MarkRunning().execute(plan, ctx)
    assert ctx.sleeps == []  # no poll floor


def test_a_daemon_that_registers_late_is_still_detected(settings):
    # The state file is written before registration: the box says alive long before the
    # Happy server lists the machine.
    happy = FakeHappy([[], [], [], [], [], [], [], running(42)])
    host = FakeHost([DaemonLiveness(True, 42)])
    ctx, plan = make(settings, happy, host)
    MarkRunning().execute(plan, ctx)
    assert happy.polls == 8
    assert ctx.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert host.starts == 0


def test_a_report_of_an_earlier_daemon_is_not_taken_for_this_one(settings):
    # The server still shows the last daemon's "running" (pid 41); ours is 42.
    happy = FakeHappy([running(41), running(41), running(42)])
    ctx, plan = make(settings, happy, FakeHost([DaemonLiveness(True, 42)]))
    MarkRunning().execute(plan, ctx)
    assert happy.polls == 3


def test_a_daemon_whose_pid_died_is_not_declared_running(settings):
    # Registered as running, then died: started again once, and its new pid must be
    # reported before the box is running.
    happy = FakeHappy([running(42), running(42), running(43)])
    host = FakeHost([DaemonLiveness(False, 42), DaemonLiveness(True, 43)], restarted_pid=43)
    ctx, plan = make(settings, happy, host)
    MarkRunning().execute(plan, ctx)
    assert host.starts == 1
    assert happy.polls == 3  # the stale report of pid 42 did not count


def test_a_daemon_that_dies_again_fails_the_attempt(settings):
    happy = FakeHappy([running(42), running(43)])
    host = FakeHost([DaemonLiveness(False, 42), DaemonLiveness(False, 43)], restarted_pid=43)
    ctx, plan = make(settings, happy, host)
    with pytest.raises(TransientError):
        MarkRunning().execute(plan, ctx)
    assert host.starts == 1


def test_a_machine_listed_shutting_down_is_not_running(settings):
    stopping = [HappyMachine(MACHINE, True, None, {"status": "shutting-down", "pid": 42})]
    happy = FakeHappy([stopping, stopping, running(42)])
    host = FakeHost([DaemonLiveness(True, 42)])
    ctx, plan = make(settings, happy, host)
    MarkRunning().execute(plan, ctx)
    assert host.checks == 1  # the box is asked only once Happy says running


def test_the_pid_start_daemon_just_saw_alive_needs_no_second_look_at_the_box(settings):
    happy = FakeHappy([[], running(42)])
    host = FakeHost([DaemonLiveness(True, 42)])
    ctx, plan = make(settings, happy, host)
    ctx.daemon_pids[USER.name] = 42  # bring_up_daemon in this task (RUN_AHEAD)
    MarkRunning().execute(plan, ctx)
    assert host.checks == 0


def test_a_known_pid_that_is_not_the_reported_one_is_checked_on_the_box(settings):
    happy = FakeHappy([running(41), running(42)])
    host = FakeHost([DaemonLiveness(True, 42)])
    ctx, plan = make(settings, happy, host)
    ctx.daemon_pids[USER.name] = 42
    MarkRunning().execute(plan, ctx)
    assert host.checks == 1 and happy.polls == 2
