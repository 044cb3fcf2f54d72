"""What the web process pays per published task: the message and nothing else (no result
subscription, no "task-sent" event), whatever kind of job it is."""

from __future__ import annotations

import uuid
from typing import Any

from celery.signals import after_task_publish, before_task_publish

from app.services.jobs import PaymentJob, ServerJob


def _published(job: Any) -> list[tuple[str, dict, str]]:
    from workers.dispatch import publish

    seen: list[tuple[str, dict, str]] = []

    def note(sender: str, headers: dict, exchange: str = "", **_: Any) -> None:
        seen.append((sender, headers, exchange))

    before_task_publish.connect(note, weak=False)
    try:
        publish(job)
    finally:
        before_task_publish.disconnect(note)
    return seen


def test_a_payment_job_is_published_without_a_result_subscription(app):
    from workers import celery_app

    subscribed_before = set(celery_app.backend.result_consumer.subscribed_to)
    seen = _published(PaymentJob(str(uuid.uuid4())))
    assert [(name, headers["ignore_result"]) for name, headers, _ in seen] == [
        ("billing.apply_payment_event", True)
    ]
    # No subscription to the task's result channel: nobody reads that result.
    assert set(celery_app.backend.result_consumer.subscribed_to) == subscribed_before


def test_a_server_job_keeps_its_task_s_result_setting(app):
    seen = _published(ServerJob("maintenance.clean_server", str(uuid.uuid4())))
    assert [(name, headers["ignore_result"]) for name, headers, _ in seen] == [
        ("maintenance.clean_server", True)
    ]


def test_no_task_sent_event_by_default(app):
    from workers import celery_app

    sent: list[str] = []

    def note(sender: str, **_: Any) -> None:
        sent.append(sender)

    after_task_publish.connect(note, weak=False)
    try:
        _published(PaymentJob(str(uuid.uuid4())))
    finally:
        after_task_publish.disconnect(note)
    assert sent == ["billing.apply_payment_event"]
    assert celery_app.conf.task_send_sent_event is False
