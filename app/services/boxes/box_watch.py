"""Watching a box without polling: change notices through Redis pub/sub.

Publishing (every process that writes boxes: API, workers, CLI). The one place that sees
every change of a box's document is the session: a flush that writes a ``VibeBox`` row
(status, step, attempts, degraded, ...), one of its ``ProvisioningStep`` rows (the
timeline) or a ``BoxEvent`` (events) notes the box id, and when the session commits the ids
are published on :data:`CHANNEL` (the after-commit pattern of :mod:`app.services.jobs`: a
rolled-back transaction publishes nothing, and a reader woken by the notice sees the
committed row). A notice that is lost (Redis down, a bulk UPDATE the ORM does not see) only
delays a waiter until its next re-check.

Waiting (the API, ``GET /api/vibeboxes/<id>?wait=N``): one :class:`BoxWatcher` per web
process runs ONE listener thread subscribed to :data:`CHANNEL` and wakes the waiters of
the box named in each notice (a ``threading.Event`` per waiter). A waiter re-reads the box
when woken and every ``recheck_seconds`` regardless, and returns as soon as the document
differs. At most ``max_waiters`` requests of a process wait at once (the rest are refused
with 429 ``long_poll_busy``), so long polls never take every thread of a gthread worker.
While the listener is not subscribed (Redis down) nobody waits: a long poll answers at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any, TypeVar

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.models import BoxEvent, ProvisioningStep, VibeBox

log = logging.getLogger(__name__)

CHANNEL = "vibebox:box-changed"
_KEY = "vibebox.changed_boxes"
WARN_EVERY_SECONDS = 30.0
# After a failed publish, commits skip publishing this long: a Redis that hangs must not
# slow every commit down by its connect timeout.
PUBLISH_PAUSE_SECONDS = 5.0

T = TypeVar("T")

# --- publishing -------------------------------------------------------------------------------

_publish_url: str | None = None
_last_warning = [0.0]
_paused_until = [0.0]


def configure_publisher(redis_url: str | None) -> None:
    """Where change notices go (the API, the workers and the CLI call this at start-up;
    ``None``: notices are not sent and waiters rely on their re-check)."""
    global _publish_url
    _publish_url = redis_url


def changed_boxes(session: Session) -> set[str]:
    """Box ids whose documents this session changed since its last commit (for tests)."""
    return set(session.info.get(_KEY, ()))


@event.listens_for(Session, "after_flush")
def _note_changed_boxes(session: Session, _flush_context: Any) -> None:
    ids: set[str] = set()
    for obj in chain(session.new, session.dirty, session.deleted):
        if isinstance(obj, VibeBox):
            if obj in session.dirty and not session.is_modified(obj, include_collections=False):
                continue
            ids.add(str(obj.id))
        elif isinstance(obj, ProvisioningStep | BoxEvent) and obj.vibebox_id is not None:
            ids.add(str(obj.vibebox_id))
    if ids:
        session.info.setdefault(_KEY, set()).update(ids)


@event.listens_for(Session, "after_commit")
def _publish_changed_boxes(session: Session) -> None:
    ids = session.info.pop(_KEY, None)
    if not ids or _publish_url is None or time.monotonic() < _paused_until[0]:
        return
    try:
        client = _redis(_publish_url)
        with client.pipeline(transaction=False) as pipe:
            for box_id in sorted(ids):
                pipe.publish(CHANNEL, box_id)
            pipe.execute()
    except redis.RedisError as exc:  # waiters re-check on their own: a delay, not a loss
        now = time.monotonic()
        _paused_until[0] = now + PUBLISH_PAUSE_SECONDS
        if now - _last_warning[0] > WARN_EVERY_SECONDS:
            _last_warning[0] = now
            log.warning("could not publish box changes (%s); long polls re-check", exc)


@event.listens_for(Session, "after_rollback")
def _forget_changed_boxes(session: Session) -> None:
    session.info.pop(_KEY, None)


def _redis(url: str) -> redis.Redis:
    from app.extensions import get_redis

    return get_redis(url)


# --- waiting ----------------------------------------------------------------------------------


class WaitersExhaustedError(Exception):
    """This process already has ``max_waiters`` long polls waiting."""


class BoxWatcher:
    """The per-process listener and its waiters (see the module docstring)."""

    def __init__(self, redis_url: str, *, max_waiters: int, recheck_seconds: float) -> None:
        self.redis_url = redis_url
        self.max_waiters = max_waiters
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._count = 0
        self._thread: threading.Thread | None = None
        # Set once the listener's first subscription attempt ended (subscribed or failed):
        # before that, "not subscribed" means "still connecting", not "Redis is down".
        self._connected_once = threading.Event()
        self.connect_wait_seconds = 1.0
        self._pid = 0
        self._stop = threading.Event()
        self.subscribed = threading.Event()

    # the listener

    def start(self) -> bool:
        """Start the listener thread (once per process; again after a fork). True when it
        was started now."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return False
            self._pid = os.getpid()
            self.subscribed.clear()
            self._connected_once.clear()
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._listen, name="vibebox-box-watcher", daemon=True
            )
            self._thread.start()
            return True

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2, health_check_interval=15
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL)
                self.subscribed.set()
                self._connected_once.set()
                delay = 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self.notify(data.decode() if isinstance(data, bytes) else str(data))
            except (redis.RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("box watcher lost Redis (%s); long polls answer at once", exc)
                self.subscribed.clear()
                self._connected_once.set()
                self._wake_all()  # waiters re-check now instead of at their next interval
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass
        self.subscribed.clear()

    def notify(self, box_id: str) -> None:
        """Wake every waiter of ``box_id``."""
        with self._lock:
            for waiter in self._waiters.get(box_id, ()):
                waiter.set()

    def _wake_all(self) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    waiter.set()

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._count

    @contextmanager
    def _waiter(self, box_id: str) -> Iterator[threading.Event]:
        waiter = threading.Event()
        with self._lock:
            if self._count >= self.max_waiters:
                raise WaitersExhaustedError
            self._count += 1
            self._waiters.setdefault(box_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                self._count -= 1
                waiters = self._waiters.get(box_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[box_id]

    def wait_for_change(
        self,
        box_id: uuid.UUID | str,
        read: Callable[[], T],
        unchanged: Callable[[T], bool],
        seconds: float,
    ) -> T | None:
        """Wait up to ``seconds`` until ``read()`` gives something ``unchanged`` refuses;
        returns that, or None when nothing changed (or Redis is down: no waiting then).
        ``read`` must see committed data each time (it opens and ends its own transaction).
        Raises :class:`WaitersExhaustedError` when this process has enough waiters."""
        self.start()
        # While the listener is still connecting for the first time, every caller (not only
        # the one that started it) waits up to a second for it; after that, "not subscribed"
        # means Redis is down (app/outage.py): answer now rather than hang on a poll.
        connecting = not self._connected_once.is_set()
        wait = min(self.connect_wait_seconds, seconds) if connecting else 0
        if not self.subscribed.wait(timeout=wait):
            return None
        deadline = time.monotonic() + seconds
        with self._waiter(str(box_id)) as waiter:
            # A change committed between the caller's read and our subscription: look once.
            current = read()
            if not unchanged(current):
                return current
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                waiter.wait(timeout=min(remaining, self.recheck_seconds))
                waiter.clear()
                current = read()
                if not unchanged(current):
                    return current
                if not self.subscribed.is_set():
                    return None
