"""Celery's options: the fixed ones as module attributes (``config_from_object``), and
``options(...)`` built from the settings object (``app.config.CelerySettings`` and
``BeatSettings``) for ``celery_app.conf.update``. Nothing here reads the environment.

Crash safety: a task is acknowledged only after it finished (``task_acks_late``) and is
redelivered when its worker dies (``task_reject_on_worker_lost``); each worker process
reserves one message at a time. Redis redelivers an unacknowledged message after
``visibility_timeout``, which must stay above the longest task run time and any countdown.

Brokers: Redis (the default, ``REDIS_URL``) or RabbitMQ (``CELERY_BROKER_URL=amqp://...``);
README "Brokers" says which for which deployment. Whatever the broker, Redis stays required
(rate limits, locks, the token blocklist), so results default to ``REDIS_URL``: a result
backend on the broker URL would not even load for AMQP (Celery has no ``amqp`` backend).
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from app.config import BeatSettings, CelerySettings


def is_amqp(url: str) -> bool:
    """True for a RabbitMQ broker URL (``amqp://``, ``amqps://``, ``pyamqp://``)."""
    return url.split("://", 1)[0].lower() in {"amqp", "amqps", "pyamqp", "librabbitmq"}


task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Progress lives in PostgreSQL, so no task result is stored or awaited - except the probe's
# (``maintenance.probe_worker`` sets ignore_result=False). Publishing a task whose result is kept
# also subscribes the publisher to its result channel: every API process would pile up
# subscriptions nobody reads, and while Redis is down each publish waited ~20 s for that
# subscription before failing.
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
result_expires = 24 * 3600

# Redis restarts and outages (README: Security). The worker never gives up on the broker:
# it reconnects with backoff (2 s steps, at most 30 s apart) for as long as Redis is away,
# instead of exiting after Celery's default 100 attempts (about 45 minutes), which under
# `make run` stopped the whole stack. Connects time out, idle connections are PINGed, and
# TCP keepalive notices a peer that vanished without closing.
broker_connection_retry = True
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
# Publishing (API, beat, chains): a few quick retries, then the caller decides (the API
# leaves committed work to the reconciler; see app/outage.py).
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
# Results and task states (task_track_started) ride out a restart too, rather than failing a
# task that did its work: each write already retries for about 20 s (the Redis backend's own
# policy); on top of that it is retried 10 times with backoff (10 ms doubling up to 10 s).
# The task's hard time limit still bounds a task stuck on a dead Redis.
result_backend_always_retry = True
result_backend_max_retries = 10
redis_socket_connect_timeout = 5
redis_backend_health_check_interval = 10
# On a broker reconnect, late-acknowledged tasks that are running keep running (the default,
# made explicit): their messages are redelivered, and every step is idempotent and guarded
# by a lease, so a duplicate is a no-op - cancelling a step mid-SSH would do more harm.
worker_cancel_long_running_tasks_on_connection_loss = False

task_default_queue = "celery"
# Classic durable queues on RabbitMQ, not quorum queues (README "Brokers"): every message is
# persistent and confirmed either way, and PostgreSQL, not the broker, is the record of what
# must happen (the reconciler resends a lost step), so replicating queues across a RabbitMQ
# cluster buys little here; quorum queues would also need Celery's native delayed delivery
# (topic exchanges and a tower of TTL queues) for our countdown retries, because a quorum
# queue does not support the global QoS a worker uses to hold ETA messages.
task_queues = (
    Queue("provisioning"),
    Queue("control"),
    Queue("maintenance"),
    Queue("celery"),
)
# Route by the dotted task name's area so operators can scale each queue separately.
task_routes = {
    "provisioning.*": {"queue": "provisioning"},
    "billing.*": {"queue": "provisioning"},  # a payment's effect: it starts a provisioning
    "teardown.*": {"queue": "provisioning"},
    "control.*": {"queue": "control"},
    "maintenance.*": {"queue": "maintenance"},
    "capacity.*": {"queue": "maintenance"},
}

worker_send_task_events = True  # Flower's live view
worker_hijack_root_logger = False

# Beat runs once: every beat process may be started (one per machine, for failover), but only
# the holder of the Redis leader lease sends (workers/beat.py).
beat_scheduler = "workers.beat:LeaderScheduler"


def transport_options(celery: CelerySettings) -> dict[str, Any]:
    """The broker's transport options (and AMQP heartbeat)."""
    if is_amqp(celery.broker_url):
        # Publisher confirms: a publish returns only once RabbitMQ has taken the message
        # (and, the queues being durable and the messages persistent, written it), so
        # "committed, then enqueued" means the step survives a broker restart. RabbitMQ
        # redelivers an unacknowledged message as soon as the consumer's connection or
        # channel closes - no visibility timeout to wait for - and AMQP heartbeats notice a
        # vanished peer.
        return {
            "broker_transport_options": {"confirm_publish": True, "connect_timeout": 5},
            "broker_heartbeat": 30,
        }
    return {
        "broker_transport_options": {
            # Longer than task_time_limit and the longest held countdown: an unacknowledged
            # message comes back only when its worker is really gone.
            "visibility_timeout": celery.visibility_timeout,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 10,
        }
    }


def beat_schedule(beat: BeatSettings) -> dict[str, dict[str, object]]:
    """The sweepers and their periods (seconds)."""

    def every(task: str, seconds: float, expires: int) -> dict[str, object]:
        return {"task": task, "schedule": seconds, "options": {"expires": expires}}

    return {
        "reconcile-stuck-boxes": every(
            "maintenance.reconcile", beat.reconcile_interval_seconds, 60
        ),
        "pool-health-check": every(
            "maintenance.health_sweep", beat.health_check_interval_seconds, 60
        ),
        "expire-subscriptions": every(
            "maintenance.expire_subscriptions", beat.expiry_interval_seconds, 300
        ),
        "cloud-capacity": every("capacity.sweep", beat.cloud_sweep_interval_seconds, 60),
        "reconcile-pending-orders": every(
            "maintenance.reconcile_orders", beat.order_reconcile_interval_seconds, 300
        ),
    }


def options(celery: CelerySettings, beat: BeatSettings | None = None) -> dict[str, Any]:
    """The options that come from the settings, for ``celery_app.conf.update`` (the fixed
    ones above are loaded with ``config_from_object("celery_config")`` first).

    ``vibebox_max_countdown``: a retry's countdown is held by the worker as an
    unacknowledged message (both brokers). On RabbitMQ a delivery unacknowledged for longer
    than the server's ``consumer_timeout`` (default 30 min) closes the worker's channel and
    redelivers everything it held; on Redis one held past ``visibility_timeout`` is
    delivered a second time. So a countdown is held only up to this cap (plus the task's run
    time, well below both limits); a longer backoff is not held at all: the box keeps its
    ``next_retry_at`` and the reconciler sends it on (workers/boxes.py). The engine's own
    caps (PROVISION_RETRY_MAX_SECONDS 300, CAPACITY_RETRY_MAX_SECONDS 300) stay below it.

    ``task_send_sent_event``: a "task-sent" event costs every publisher (the web answering a
    webhook, too) one more Redis PUBLISH per task; Flower shows each task from the worker's
    "received" on without it. CELERY_SEND_SENT_EVENT=1 brings it back."""
    return {
        "broker_url": celery.broker_url,
        "result_backend": celery.result_backend,
        # Never let a hung remote call hold a worker forever; SoftTimeLimitExceeded first.
        "task_soft_time_limit": celery.task_soft_time_limit,
        "task_time_limit": celery.task_time_limit,
        **transport_options(celery),
        "result_backend_transport_options": {"visibility_timeout": celery.visibility_timeout},
        "task_send_sent_event": celery.send_sent_event,
        "beat_schedule": beat_schedule(beat or BeatSettings()),
        "vibebox_max_countdown": celery.max_countdown,
    }


def configure(app: Any, celery: CelerySettings, beat: BeatSettings | None = None) -> None:
    """Configure the Celery ``app``: the fixed options of this module, then the settings'."""
    app.config_from_object("celery_config")
    app.conf.update(options(celery, beat))
