"""Enqueue after commit, as infrastructure.

Services never publish a task themselves: they call :func:`enqueue` inside their
transaction, and the job is published by the session's ``after_commit`` hook, only once the
rows it refers to are committed (a rolled-back transaction publishes nothing). A job lost
between commit and publish (a crash, a broker outage) is not lost work: the reconciler finds
the box by its state in PostgreSQL and sends it again.

The publisher is ``workers.dispatch`` (imported when the first job is published), so no
route, CLI command or service imports a task module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_KEY = "vibebox.jobs"


@dataclass(frozen=True)
class Job:
    """Run ``step`` of box ``box_id`` (``countdown`` seconds from now)."""

    box_id: str
    step: str
    countdown: float = 0.0


@dataclass(frozen=True)
class ServerJob:
    """A server-level task (``clean_server``)."""

    task: str
    server_id: str


@dataclass(frozen=True)
class PaymentJob:
    """Apply a recorded payment event (``billing.apply_payment_event``)."""

    event_id: str


Publisher = Callable[[Job | ServerJob | PaymentJob], None]
_publisher: Publisher | None = None


def set_publisher(publisher: Publisher | None) -> None:
    """Replace the publisher (tests of the engine collect jobs instead of sending them)."""
    global _publisher
    _publisher = publisher


def enqueue(session: Session, box_id: uuid.UUID | str, step: str, countdown: float = 0.0) -> None:
    """Publish "run ``step`` for this box" once ``session`` commits."""
    session.info.setdefault(_KEY, []).append(Job(str(box_id), step, countdown))


def enqueue_server(session: Session, task: str, server_id: uuid.UUID | str) -> None:
    session.info.setdefault(_KEY, []).append(ServerJob(task, str(server_id)))


def enqueue_payment_event(session: Session, payment_event_id: uuid.UUID | str) -> None:
    """Publish "apply this recorded payment event" once ``session`` commits."""
    session.info.setdefault(_KEY, []).append(PaymentJob(str(payment_event_id)))


def pending(session: Session) -> list[Job | ServerJob | PaymentJob]:
    """Jobs waiting for this session's commit (for tests)."""
    return list(session.info.get(_KEY, []))


def _publish(job: Job | ServerJob | PaymentJob) -> None:
    publisher = _publisher
    if publisher is None:
        from workers.dispatch import publish  # the Celery side, loaded on first use

        publisher = publish
    publisher(job)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    jobs = session.info.pop(_KEY, None)
    for job in jobs or ():
        try:
            _publish(job)
        except Exception as exc:  # the broker may be down: the reconciler sends it again
            log.warning(
                "could not publish %s (%s: %s); the reconciler will resend it",
                job,
                type(exc).__name__,
                exc,
            )


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)
