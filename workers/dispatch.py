"""Publishing what services enqueued (``app.services.jobs``), after their commit."""

from __future__ import annotations

from app import logging as app_logging
from app.services.jobs import Job, PaymentJob, ServerJob
from workers import celery_app


def publish(job: Job | ServerJob | PaymentJob) -> None:
    """Send the task, with the current request id (if any) as a message header: the worker
    logs the task's lines with it (``workers._bind_log_context``)."""
    request_id = app_logging.current("request_id")
    headers = {"request_id": request_id} if request_id else None
    if isinstance(job, Job):
        from workers.boxes import TASKS

        TASKS[job.step].apply_async(
            args=[job.box_id], countdown=job.countdown or None, headers=headers
        )
    elif isinstance(job, PaymentJob):
        celery_app.send_task("billing.apply_payment_event", args=[job.event_id], headers=headers)
    else:
        celery_app.send_task(job.task, args=[job.server_id], headers=headers)
