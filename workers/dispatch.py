"""Publishing what services enqueued (``app.services.jobs``), after their commit."""

from __future__ import annotations

from app.services.jobs import Job, ServerJob
from workers import celery_app


def publish(job: Job | ServerJob) -> None:
    if isinstance(job, Job):
        from workers.boxes import TASKS

        TASKS[job.step].apply_async(args=[job.box_id], countdown=job.countdown or None)
    else:
        celery_app.send_task(job.task, args=[job.server_id])
