"""What a task needs at hand: settings, Redis, job store, limiter, BFL client and a dispatcher.

One Runtime per worker process, built from Settings at start-up; tests build their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import redis

from fluxq.config.settings import Settings
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import Job
from fluxq.workers.state.latency_book import LatencyBook
from fluxq.workers.state.lease_keeper import LeaseKeeper
from fluxq.workers.state.limiter import Caps, SlotLimiter
from fluxq.workers.state.poll_queue import PollQueue
from fluxq.workers.state.redis_client import MasterWatch, connect
from fluxq.workers.state.store import JobStore

PROMPT_PREVIEW_WORDS = 6
PROMPT_PREVIEW_CHARS = 60


class Dispatcher(Protocol):
    """Sends the next piece of work for a job; Celery in production, a recorder in unit tests."""

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None: ...

    def poll(self, job: Job, *, countdown_s: float) -> None: ...

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None: ...

    def notify(self, job: Job) -> None: ...

    def callback(self, job: Job, payload: dict[str, object]) -> None: ...


def describe(job: Job) -> tuple[str, str]:
    """Flower's args and kwargs text: job, endpoint and the prompt's first words; never a secret."""
    prompt = str(job.request.get("prompt") or "")
    words = prompt.split()
    preview = " ".join(words[:PROMPT_PREVIEW_WORDS])[:PROMPT_PREVIEW_CHARS]
    if len(words) > PROMPT_PREVIEW_WORDS or len(preview) < len(prompt.strip()):
        preview += "…"
    argsrepr = f'job={job.job_id} endpoint={job.endpoint} "{preview}"'
    kwargsrepr = f"batch={job.batch}"
    return argsrepr, kwargsrepr


def flower_options(task: Any) -> dict[str, Any]:
    """Keep a retried task's Flower text: Celery's retry would otherwise show raw args."""
    options: dict[str, Any] = {}
    for name in ("argsrepr", "kwargsrepr"):
        value = getattr(task.request, name, None)
        if value:
            options[name] = value
    return options


@dataclass
class Runtime:
    """Everything the task logic touches, so it can run without a broker in tests."""

    settings: Settings
    redis: redis.Redis[str]
    store: JobStore
    limiter: SlotLimiter
    bfl: BFLClient
    dispatch: Dispatcher
    label: str
    leases: LeaseKeeper
    latency: LatencyBook
    polls: PollQueue
    clock: Callable[[], float] = field(default=time.time)
    master_watch: MasterWatch | None = None

    def close(self) -> None:
        if self.master_watch is not None:
            self.master_watch.close()
        self.leases.close()
        self.bfl.close()
        self.redis.close()


def build_runtime(
    settings: Settings,
    *,
    redis_url: str,
    dispatch: Dispatcher,
    transport: httpx.BaseTransport | None = None,
) -> Runtime:
    """A Runtime for these settings; the caller closes it."""
    client: redis.Redis[str] = connect(
        redis_url,
        sentinel_master=settings.redis_sentinel_master,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    label = keys.key_label(settings.bfl_api_key)
    limiter = SlotLimiter(
        client,
        label=label,
        caps=Caps(key_cap=settings.active_cap, group_caps=dict(settings.endpoint_caps)),
        lease_ttl_s=settings.lease_ttl_s,
        aimd_increase_interval_s=settings.aimd_increase_interval_s,
        aimd_decrease_factor=settings.aimd_decrease_factor,
        probe_extra=settings.probe_extra if settings.probe_submits else 0,
    )
    return Runtime(
        settings=settings,
        redis=client,
        store=JobStore(
            client,
            terminal_ttl_s=settings.job_ttl_s,
            min_replicas=settings.redis_min_replicas,
            replica_wait_ms=settings.redis_replica_wait_ms,
        ),
        limiter=limiter,
        bfl=BFLClient(settings, transport=transport),
        dispatch=dispatch,
        label=label,
        leases=LeaseKeeper(limiter, clock=time.time),
        latency=LatencyBook(
            client,
            budget=settings.poll_budget,
            prior_median_s=settings.poll_prior_median_s,
            typical_s=typical_times(settings),
            reference_s=settings.poll_reference_s,
        ),
        polls=PollQueue(client, label),
        master_watch=MasterWatch(client).start(),
    )


def typical_times(settings: Settings) -> dict[str, float]:
    """Each endpoint's prior generation time: the catalog's typical time, unless the user set
    FLUXQ_POLL_PRIOR_MEDIAN_S (then that, for every endpoint)."""
    if "poll_prior_median_s" in settings.model_fields_set:
        return {}
    catalog = settings.catalog
    return {name: spec.typical_s for name, spec in catalog.items() if spec.typical_s is not None}
