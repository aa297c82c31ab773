"""The Celery app, made by a function from settings: nothing is built at import time.

``fluxq worker`` builds one per worker process; producers build one to send tasks by name.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from fluxq.config.celery import ALL_QUEUES, celery_config
from fluxq.config.errors import ConfigError
from fluxq.config.settings import Settings


def _queue(name: str) -> Queue:
    # Each queue has its own exchange and routing key. Without them every queue is bound to the
    # default exchange under one key, and a message published by exchange and key (not by queue
    # name, as Celery's router does) would be copied into all four.
    exchange = Exchange(name, type="direct")  # type: ignore[no-untyped-call]
    return Queue(name, exchange, routing_key=name)  # type: ignore[no-untyped-call]


def make_celery(settings: Settings) -> Celery:
    """A Celery app on ``settings.redis_url`` with fluxq's queues and configuration."""
    if not settings.redis_url:
        raise ConfigError(
            "FLUXQ_REDIS_URL is unset: set it to the Redis the workers use "
            "(`fluxq worker` starts an embedded one and prints its URL)"
        )
    celery = Celery("fluxq")
    celery.conf.update(
        celery_config(settings.redis_url, sentinel_master=settings.redis_sentinel_master)
    )
    celery.conf.task_queues = [_queue(name) for name in ALL_QUEUES]
    return celery
