"""Publishing what services enqueued (``app.services.jobs``), after their commit."""

from __future__ import annotations

from app import logging as app_logging
from app.services.jobs import Job, PaymentJob, ServerJob
from workers import celery_app


def publish(job: Job | ServerJob | PaymentJob) -> None:
    """Send the task, with the current request id (if any) as a message header: the worker
    logs the task's lines with it (``workers._bind_log_context``).

    Through the registered task's ``apply_async``, not ``send_task`` by name: ``send_task``
    does not apply the task's ``ignore_result``, so each publish subscribed the publisher to
    the task's result channel (a SUBSCRIBE and a later UNSUBSCRIBE: two Redis round trips
    per webhook, for a result nobody reads)."""
    request_id = app_logging.current("request_id")
    headers = {"request_id": request_id} if request_id else None
    if isinstance(job, Job):
        from workers.boxes import TASKS

        TASKS[job.step].apply_async(
            args=[job.box_id], countdown=job.countdown or None, headers=headers
        )
    elif isinstance(job, PaymentJob):
        celery_app.tasks["billing.apply_payment_event"].apply_async(
            args=[job.event_id], headers=headers
        )
    else:
        celery_app.tasks[job.task].apply_async(args=[job.server_id], headers=headers)
