"""RabbitMQ with only CELERY_BROKER_URL changed: results on REDIS_URL, publisher confirms; and
the countdown policy that keeps held messages within RabbitMQ's consumer_timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from app.config import CelerySettings
from app.services.boxes import runner
from workers import boxes

_SHOW = """
import json
from workers import celery_app
from app.config import Settings
print(json.dumps({
    "broker": celery_app.conf.broker_url,
    "backend": type(celery_app.backend).__name__,
    "result_backend": celery_app.conf.result_backend,
    "options": celery_app.conf.broker_transport_options,
    "settings_backend": Settings.from_env().celery.result_backend,
}))
"""


def _config_with(**env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    out = subprocess.run(
        [sys.executable, "-c", _SHOW], env={**clean, **env}, capture_output=True, check=True
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def test_an_amqp_broker_alone_keeps_results_on_redis_with_publisher_confirms():
    redis_url = os.environ["REDIS_URL"]
    conf = _config_with(CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5999//")
    assert conf["broker"].startswith("amqp://")
    assert conf["backend"] == "RedisBackend"  # not "Unknown result backend: 'amqp'"
    assert conf["result_backend"] == redis_url == conf["settings_backend"]
    assert conf["options"]["confirm_publish"] is True
    assert "visibility_timeout" not in conf["options"]


def test_the_redis_broker_keeps_its_visibility_timeout():
    conf = _config_with()
    assert conf["backend"] == "RedisBackend"
    assert conf["options"]["visibility_timeout"] >= 3600


class _Task:
    """Stands in for the bound Celery task: records a retry instead of raising one."""

    class Retry(Exception):
        pass

    def __init__(self) -> None:
        self.countdowns: list[float | None] = []

    def retry(self, countdown: float | None = None, max_retries: Any = None) -> Exception:
        self.countdowns.append(countdown)
        return self.Retry()


@pytest.mark.parametrize(("delay", "held"), [(300.0, True), (3600.0, False)])
def test_only_countdowns_below_the_cap_are_held_by_the_worker(monkeypatch, delay, held):
    assert CelerySettings().max_countdown < 1800  # RabbitMQ's default consumer_timeout
    monkeypatch.setattr(boxes, "step_context", lambda: None)
    monkeypatch.setattr(boxes, "db_session", lambda: None)

    class Runner:
        def __init__(self, *_: Any) -> None:
            pass

        def run(self, box_id: uuid.UUID, step: str) -> runner.Outcome:
            return runner.Outcome("retry", "transient", delay=delay)

    monkeypatch.setattr(runner, "StepRunner", Runner)
    task = _Task()
    if held:
        with pytest.raises(_Task.Retry):
            boxes.run_box_step(task, str(uuid.uuid4()), "configure_server")  # type: ignore[arg-type]
        assert task.countdowns == [delay]
    else:
        # the box keeps next_retry_at; the reconciler sends the step on
        assert boxes.run_box_step(task, str(uuid.uuid4()), "configure_server") == "deferred"  # type: ignore[arg-type]
        assert task.countdowns == []
