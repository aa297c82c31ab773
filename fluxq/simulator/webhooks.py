"""Webhook delivery: POST a finished task to its ``webhook_url`` with its secret, with retries.

The secret goes back verbatim in ``X-Webhook-Secret`` (BFL's own SDK's form) by default, or as
an HMAC of the body (``webhook_auth="hmac"``, the agent guide's form).

Runs as one asyncio task on the listeners' loop; the queue and concurrency are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from fluxq.simulator.engine import Simulator
from fluxq.simulator.tasks import Task

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Webhook-Secret"  # noqa: S105 - a header name, not a secret
"""The header of the default form: the webhook_secret itself."""

MAX_CONCURRENT_DELIVERIES = 16
"""Webhook POSTs in flight at once."""

IDLE_WAKE_S = 0.05
"""Longest sleep between queue checks (wall-clock): how soon an advanced clock is noticed."""


def webhook_signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256(secret, raw body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_loopback_url(url: str) -> bool:
    """True when ``url`` names localhost or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    task: Task = field(compare=False)
    attempt: int = field(compare=False, default=0)


class WebhookDispatcher:
    """Delivers webhooks for one Simulator from the running event loop."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._queue: list[_Due] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Begin delivering; hooks into the simulator so new webhook tasks are queued."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._runner = asyncio.create_task(self._run(), name="sim-webhooks")
        self.sim.on_task_created = self.schedule
        self.sim.on_reset = self.clear

    async def stop(self) -> None:
        """Stop delivering: pending and in-flight deliveries are abandoned."""
        self.sim.on_task_created = None
        self.sim.on_reset = None
        tasks = [t for t in (self._runner, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def schedule(self, task: Task, at: float | None = None, attempt: int = 0) -> None:
        """Queue a delivery at ``at`` (default: when the task is ready); thread-safe."""
        with self._lock:
            if len(self._queue) >= self.sim.config.webhook_max_pending:
                self.sim.count("webhooks_dropped_queue_full")
                return
            self._seq += 1
            heapq.heappush(
                self._queue, _Due(task.ready_at if at is None else at, self._seq, task, attempt)
            )
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def clear(self) -> None:
        """Forget queued deliveries (on reset)."""
        with self._lock:
            self._queue.clear()

    def _pop_due(self, now: float) -> list[_Due]:
        due: list[_Due] = []
        with self._lock:
            while (
                self._queue
                and self._queue[0].at <= now
                and len(self._inflight) + len(due) < MAX_CONCURRENT_DELIVERIES
            ):
                due.append(heapq.heappop(self._queue))
        return due

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            for item in self._pop_due(self.sim.clock.now()):
                job = asyncio.create_task(self._deliver(item))
                self._inflight.add(job)
                job.add_done_callback(self._finished)
            with self._lock:
                next_at = self._queue[0].at if self._queue else None
            wait_s = (
                IDLE_WAKE_S if next_at is None else min(IDLE_WAKE_S, next_at - self.sim.clock.now())
            )
            self._wake.clear()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait_s)
            else:
                await asyncio.sleep(0)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._inflight.discard(job)
        if not job.cancelled() and job.exception() is not None:
            logger.error("webhook delivery crashed: %r", job.exception())
        if self._wake is not None:
            self._wake.set()

    def payload(self, task: Task) -> dict[str, Any]:
        """The JSON posted for ``task`` now, in the configured shape."""
        now = self.sim.clock.now()
        body = self.sim.result_body(task, now)
        if self.sim.config.webhook_payload == "result_response":
            return body
        return {
            "id": task.id,
            "status": body["status"],
            "result": body["result"],
            "timestamp": int(now),
        }

    async def _deliver(self, item: _Due) -> None:
        cfg = self.sim.config
        task, url = item.task, item.task.webhook_url
        assert url is not None
        assert self._client is not None
        if not cfg.webhook_allow_non_loopback and not is_loopback_url(url):
            self.sim.count("webhooks_refused_non_loopback")
            return
        with self.sim.lock:
            raw = json.dumps(self.payload(task), separators=(",", ":")).encode()
            task.account.webhooks_sent += 1
        headers = {"content-type": "application/json"}
        if task.webhook_secret and cfg.webhook_auth == "secret":
            headers[SECRET_HEADER] = task.webhook_secret
        elif task.webhook_secret:
            headers[cfg.webhook_signature_header] = webhook_signature(task.webhook_secret, raw)
        try:
            response = await self._client.post(
                url, content=raw, headers=headers, timeout=cfg.webhook_timeout_s
            )
            delivered = 200 <= response.status_code < 300
        except httpx.HTTPError:
            delivered = False
        if delivered:
            with self.sim.lock:
                task.account.webhooks_delivered += 1
            return
        if item.attempt < len(cfg.webhook_retry_delays_s):
            delay_s = cfg.scaled(cfg.webhook_retry_delays_s[item.attempt])
            self.schedule(task, at=self.sim.clock.now() + delay_s, attempt=item.attempt + 1)
        else:
            with self.sim.lock:
                task.account.webhooks_abandoned += 1
