"""What every task shares: the box-step task base, and the sweeper lock.

A box's final failure ends its task as FAILURE (after the engine recorded it on the box); a
scheduled retry shows as RETRY. Sweepers (beat entries) run alone under one Redis lock each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task

from app.extensions import get_redis

F = TypeVar("F", bound=Callable[..., Any])


class BoxFailedError(Exception):
    """A box's workflow failed for good; the reason is on the box (``lastError``)."""


class StepTask(Task):
    """Crash-safe delivery for engine work (box steps, server cleaning): acknowledged after
    the work, redelivered when the worker dies, retries budgeted in PostgreSQL (not by
    Celery)."""

    acks_late = True
    reject_on_worker_lost = True
    max_retries = None


def sweeper(name: str, *, timeout: int = 300) -> Callable[[F], F]:
    """Run the decorated sweep only where nobody else runs it (a non-blocking Redis lock);
    returns 0 when another sweeper holds it."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from workers import get_settings

            lock = get_redis(get_settings().redis_url).lock(
                f"vibebox:lock:{name}", timeout=timeout, blocking=False
            )
            if not lock.acquire():
                return 0
            try:
                return func(*args, **kwargs)
            finally:
                lock.release()

        return wrapper  # type: ignore[return-value]

    return decorate
