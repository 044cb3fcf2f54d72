"""A real ``celery worker`` process for end-to-end tests (a separate process, never eager)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from celery import Celery

import celery_config
from app.config import CelerySettings
from tests.support.tiers import require_full_tier

QUEUES = "provisioning,control,maintenance,celery"
# Every worker and beat these helpers start, so a test that needs the broker to itself (another
# broker, two beats) can pause the session's ones (``paused``) and bring them back after.
STARTED: list[CeleryWorkerProcess | CeleryBeatProcess] = []


def amqp_client(name: str, broker_url: str) -> Celery:
    """A Celery app publishing to a RabbitMQ broker (results stay on REDIS_URL)."""
    client = Celery(name)
    celery_config.configure(client, CelerySettings.from_env())
    client.conf.update(
        broker_read_url=broker_url,
        broker_write_url=broker_url,
        broker_transport_options={"confirm_publish": True, "connect_timeout": 5},
    )
    return client


@contextlib.contextmanager
def paused(*keep: object) -> Iterator[None]:
    """Stop every running worker and beat started here (except ``keep``); start them again
    afterwards."""
    stopped = [p for p in STARTED if p.alive() and p not in keep]
    for process in stopped:
        process.stop()
    try:
        yield
    finally:
        for process in stopped:
            process.start()


class CeleryWorkerProcess:
    """Starts a real ``celery worker`` with the test environment; ends it by PID.

    The app is ``workers`` plus test-only pause points (``tests.support.failpoints``)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        concurrency: int = 2,
        extra_env: dict[str, str] | None = None,
        app_module: str = "tests.support.failpoints",
        redis_url: str | None = None,
        pool: str = "prefork",
        broker_url: str | None = None,
        queues: str = QUEUES,
        name: str | None = None,
    ):
        self.log_path = log_dir / f"celery-worker-{uuid.uuid4().hex[:6]}.log"
        self.concurrency = concurrency
        self.pool = pool
        self.extra_env = extra_env or {}
        self.app_module = app_module
        self.queues = queues
        # ``-n``: a node name as on a real machine (``a@%h``), else a unique one
        self.name = name or f"test-{uuid.uuid4().hex[:8]}@localhost"
        # A worker on a RabbitMQ broker (results, failpoints and locks stay on REDIS_URL).
        self.broker_url = broker_url
        if broker_url:
            self.extra_env = {**self.extra_env, "CELERY_BROKER_URL": broker_url}
        self.proc: subprocess.Popen[bytes] | None = None
        # A worker on a Redis of its own (broker, results, failpoints) instead of the suite's.
        self.redis_url = redis_url
        if redis_url:
            self.extra_env = {
                **self.extra_env,
                "REDIS_URL": redis_url,
                "CELERY_BROKER_URL": redis_url,
                "CELERY_RESULT_BACKEND": redis_url,
            }
        self._client: Celery | None = None

    def client(self) -> Celery:
        """A Celery app that talks to this worker's broker (sends tasks, pings, results)."""
        if self.broker_url is not None:
            if self._client is None:
                self._client = amqp_client(f"client-of-{self.name}", self.broker_url)
            return self._client
        if self.redis_url is None:
            from workers import celery_app

            return celery_app
        if self._client is None:
            client = Celery(f"client-of-{self.name}")
            celery_config.configure(client, CelerySettings.from_env())
            # CELERY_BROKER_URL / CELERY_RESULT_BACKEND in this process's environment (the
            # suite's Redis, tests/conftest.py) win over broker_url / result_backend; the
            # read/write URLs and the backend class do not.
            client.conf.update(broker_read_url=self.redis_url, broker_write_url=self.redis_url)
            client.backend_cls = self.redis_url
            self._client = client
        return self._client

    @property
    def full_name(self) -> str:
        """The node name the worker answers to (``%h`` expanded as Celery does)."""
        return self.name.replace("%h", socket.gethostname())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        require_full_tier("a Celery worker", "e2e")
        celery_app = self.client()
        env = {**os.environ, **self.extra_env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.app_module,
                "worker",
                "--loglevel=INFO",
                "-Q",
                self.queues,
                "-c",
                str(self.concurrency),
                f"--pool={self.pool}",
                "-n",
                self.name,
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own process group: signals reach only this worker
        )
        if self not in STARTED:
            STARTED.append(self)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"celery worker exited early:\n{self.tail()}")
                replies = celery_app.control.ping(destination=[self.full_name], timeout=1.0)
                if replies:
                    return
        except BaseException:
            self.stop()  # a failed ping (broker gone) must not leave the worker running
            raise
        self.stop()
        raise RuntimeError(f"celery worker did not answer ping within {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool children) at once."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class CeleryBeatProcess:
    """A real ``celery beat`` (the reconciler's clock), schedule file in a temp dir."""

    def __init__(self, log_dir: Path, *, extra_env: dict[str, str] | None = None):
        self.log_path = log_dir / f"celery-beat-{uuid.uuid4().hex[:6]}.log"
        self.schedule = log_dir / f"beat-schedule-{uuid.uuid4().hex[:6]}"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        require_full_tier("Celery beat", "e2e")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "beat",
                "--loglevel=INFO",
                "--schedule",
                str(self.schedule),
            ],
            env={**os.environ, **self.extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self not in STARTED:
            STARTED.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def sent(self, entry: str) -> int:
        """How many times this beat has sent the schedule entry ``entry`` (from its log)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f"Sending due task {entry} ")

    def stop(self, timeout: float = 10.0) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
