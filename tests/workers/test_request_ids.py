"""A task published while serving a request carries the request id into the real worker:
the worker's JSON log line for that box step has the same request_id, the box and task."""

from __future__ import annotations

import json
import time
import uuid

from app.services.boxes.provisioning import STEPS
from app.services.jobs import Job


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # Celery's start-up banner is not a log record
    return out


def test_the_worker_logs_a_published_step_with_the_request_id_of_the_request(app, celery_worker):
    from workers.dispatch import publish

    request_id = f"req-{uuid.uuid4().hex[:16]}"
    box_id = str(uuid.uuid4())  # no such box: the runner stops at once and says so
    with app.test_request_context("/healthz", headers={"X-Request-ID": request_id}):
        app.preprocess_request()  # the API's hooks bind the request id
        publish(Job(box_id, STEPS[0]))

    deadline = time.monotonic() + 60
    found: list[dict] = []
    while time.monotonic() < deadline and not found:
        found = [
            r
            for r in _json_lines(celery_worker.log_path.read_text(errors="replace"))
            if r.get("box_id") == box_id and "ended" in r.get("message", "")
        ]
        time.sleep(0.2)
    assert found, celery_worker.tail()
    record = found[0]
    assert record["request_id"] == request_id
    assert record["task_id"] and record["level"] == "INFO" and record["logger"] == "workers.boxes"
