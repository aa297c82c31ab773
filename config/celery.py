"""The pure Celery configuration of fluxq: queue names, routes and every setting chosen on purpose.

No Celery app lives here: ``workers.celery_app.make_celery(settings)`` builds one from this dict.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fluxq.config.redis_url import is_sentinel

SUBMIT_QUEUE = "fluxq.submit"
POLL_QUEUE = "fluxq.poll"
SAVE_QUEUE = "fluxq.save"
CONTROL_QUEUE = "fluxq.control"
ALL_QUEUES = (SUBMIT_QUEUE, POLL_QUEUE, SAVE_QUEUE, CONTROL_QUEUE)

DEFAULT_THREADS = 16
"""Threads of the main worker process: submit, poll and control work (and save, by default)."""

DEFAULT_SAVE_THREADS = 0
"""No separate save process by default: at one key's cap (24 tasks in flight) one process's
threads carry submit, poll and save with room to spare, and a second Celery process costs about
75 MB and its own consumer loop. Give ``--save-threads N`` when many downloads would queue behind
other work (several keys, large images)."""


VISIBILITY_TIMEOUT_S = 3600
"""Redis redelivers an unacked message after this long. It must exceed every countdown we use
(poll steps ≤ a few minutes, backoffs ≤ 60 s), or a waiting ETA message is delivered twice."""


@dataclass(frozen=True)
class TaskSpec:
    """One fluxq task: its Celery name, the queue it is routed to and the module defining it.

    The name and queue are a wire contract (messages in flight, other services' ``send_task``):
    they never change. The decorators, routes, a worker's imports and the dispatcher read them here.
    """

    name: str
    queue: str
    module: str


SUBMIT = TaskSpec("fluxq.submit", SUBMIT_QUEUE, "fluxq.tasks.submit")
POLL = TaskSpec("fluxq.poll", POLL_QUEUE, "fluxq.tasks.poll")
SAVE = TaskSpec("fluxq.save", SAVE_QUEUE, "fluxq.tasks.save")
NOTIFY = TaskSpec("fluxq.webhook", CONTROL_QUEUE, "fluxq.tasks.notify")
"""POSTs a job's outcome to the user's URL (named "webhook" on the wire since its first release)."""
ENQUEUE = TaskSpec("fluxq.enqueue", CONTROL_QUEUE, "fluxq.tasks.enqueue")
TASKS = (SUBMIT, POLL, SAVE, NOTIFY, ENQUEUE)
"""Every fluxq task; a worker imports their modules before it consumes."""

TASK_MODULES = tuple(dict.fromkeys(spec.module for spec in TASKS))
"""The modules that define fluxq's tasks (Celery's ``include``)."""

TASK_ROUTES: dict[str, dict[str, str]] = {
    **{spec.name: {"queue": spec.queue} for spec in TASKS},
    # Anything else named fluxq.* (a task added without a spec) goes to the control queue.
    "fluxq.*": {"queue": CONTROL_QUEUE},
}


BROKER_SSL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
"""TLS options a ``rediss://`` URL may carry in its query, as redis-py and kombu name them."""

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def broker_ssl(broker_url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` URL: check the server's certificate.

    Without it kombu connects to a bare ``rediss://`` URL without checking the certificate (it
    logs "defaulting to insecure SSL behaviour"), where redis-py, fluxq's other client, checks
    it against the system's CAs. The URL's own options (``?ssl_ca_certs=/path/ca.pem``,
    ``ssl_cert_reqs=none|optional|required``) are repeated here, so Flower's broker view, which
    reads only this setting, uses the same CA.
    """
    parts = urlsplit(broker_url)
    if parts.scheme != "rediss":
        return None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    options: dict[str, Any] = {key: query[key] for key in BROKER_SSL_OPTIONS if key in query}
    wanted = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    options["ssl_cert_reqs"] = CERT_REQS.get(wanted, ssl.CERT_REQUIRED)
    return options


def celery_config(broker_url: str, *, sentinel_master: str = "mymaster") -> dict[str, Any]:
    """The Celery configuration for a broker URL; each choice says why.

    Queues are given by name (``QUEUE_NAMES``) and built into kombu ``Queue`` objects by the app
    factory, so this module needs nothing but plain data. ``sentinel_master``: the master's name
    when the URL names Sentinels (kombu's ``master_name``).
    """
    transport: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # Fair round-robin across the queues a worker consumes.
        "queue_order_strategy": "round_robin",
    }
    if is_sentinel(broker_url):
        transport["master_name"] = sentinel_master
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        # Keep retrying a lost broker connection (a Redis restart) instead of giving up.
        "broker_connection_max_retries": None,
        # rediss://: verify the certificate as redis-py does (kombu alone would not).
        "broker_use_ssl": broker_ssl(broker_url),
        "broker_transport_options": transport,
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
        "task_default_queue": CONTROL_QUEUE,
        "task_routes": TASK_ROUTES,
        # The threads pool cannot enforce time limits; every call is bounded by httpx timeouts.
        "worker_pool": "threads",
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "include": list(TASK_MODULES),
    }
