"""Workers yield the CPU to the API: a real worker process runs at WORKER_NICE (10)."""

from __future__ import annotations

import os


def test_the_worker_runs_at_a_lower_cpu_priority_than_the_api(celery_worker):
    # the shipped default
    assert "WORKER_NICE" not in {**os.environ, **celery_worker.extra_env}
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    worker = os.getpriority(os.PRIO_PROCESS, celery_worker.proc.pid)
    assert worker == min(19, ours + 10)
