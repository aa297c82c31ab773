"""The Celery app: Redis broker, one queue per kind of work, and every setting chosen on purpose.

``celery -A workers.celery_app worker`` and ``fluxq worker`` both load this module.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from config.settings import Settings, load_settings

SUBMIT_QUEUE = "fluxq.submit"
POLL_QUEUE = "fluxq.poll"
SAVE_QUEUE = "fluxq.save"
CONTROL_QUEUE = "fluxq.control"
ALL_QUEUES = (SUBMIT_QUEUE, POLL_QUEUE, SAVE_QUEUE, CONTROL_QUEUE)

VISIBILITY_TIMEOUT_S = 3600
"""Redis redelivers an unacked message after this long. It must exceed every countdown we use
(poll steps ≤ a few minutes, backoffs ≤ 60 s), or a waiting ETA message is delivered twice."""

TASK_MODULES = [
    "tasks.submit",
    "tasks.poll",
    "tasks.save",
    "tasks.callbacks",
    "tasks.control",
]


def _queue(name: str) -> Queue:
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]


def celery_config(settings: Settings, broker_url: str) -> dict[str, object]:
    """The Celery configuration for ``settings``; each choice says why."""
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # Fair round-robin across the queues a worker consumes.
            "queue_order_strategy": "round_robin",
        },
        # fluxq keeps its own job state in Redis; Celery results would only cost memory.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Every task is safe to redeliver: submit checks a CAS state and a "submitting" marker,
        # poll is a GET, save writes atomically: ack after the work, requeue if a worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per thread: a worker must not hoard admitted submits.
        "worker_prefetch_multiplier": 1,
        # Flower needs events: task-sent from producers, the rest from workers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Each queue has its own exchange and routing key. Without them every queue is bound to
        # the default exchange under one key, and a message published by exchange and key (not
        # by queue name, as Celery's router does) would be copied into all four.
        "task_queues": [_queue(name) for name in ALL_QUEUES],
        "task_default_queue": CONTROL_QUEUE,
        "task_routes": {
            "fluxq.submit": {"queue": SUBMIT_QUEUE},
            "fluxq.poll": {"queue": POLL_QUEUE},
            "fluxq.save": {"queue": SAVE_QUEUE},
            "fluxq.*": {"queue": CONTROL_QUEUE},
        },
        # The threads pool cannot enforce time limits; every call is bounded by httpx timeouts.
        "worker_pool": "threads",
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "include": TASK_MODULES,
    }


def make_celery(settings: Settings, broker_url: str) -> Celery:
    """A Celery app for these settings and broker."""
    celery = Celery("fluxq")
    celery.conf.update(celery_config(settings, broker_url))
    return celery


UNSET_BROKER_URL = "redis://fluxq-redis-url-is-unset.invalid:6379/0"
"""Used when FLUXQ_REDIS_URL is unset at import: ``.invalid`` never resolves, so nothing silently
talks to some other Redis on localhost. ``fluxq worker`` and ``fluxq demo`` start an embedded
Redis and export its URL before they import this module."""


def _app_from_env() -> Celery:
    settings = load_settings()
    return make_celery(settings, settings.redis_url or UNSET_BROKER_URL)


app = _app_from_env()
