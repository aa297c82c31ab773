"""Long polls wake on their job's own state change: one subscriber to ``fluxq:events`` per API.

A long poll used to read its job from Redis every 0.15 s: 256 of them cost about 1,700 reads a
second and pushed ``/healthz``'s p99 past 250 ms on 2 cores. Every state change already publishes
one event on ``fluxq:events`` (``lib.lua``), so one subscription, read in a thread, wakes the
waiters of that job; a waiter still reads its job every ``FALLBACK_S`` in case an event was
missed (Redis restarted, the subscriber reconnecting).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workers.state import keys

log = logging.getLogger("fluxq.api")

FALLBACK_S = 2.0
"""A waiter reads its job at least this often even without an event: what a missed event costs."""

RECONNECT_S = 1.0
"""How long the subscriber waits before subscribing again after Redis failed it."""


class JobEvents:
    """Wakes the long polls of a job when an event for it arrives (see the module docstring)."""

    def __init__(self, client: redis.Redis[str], loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._waiters: dict[str, set[asyncio.Event]] = {}  # touched on the loop's thread only
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-job-events", daemon=True)

    def start(self) -> JobEvents:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=RECONNECT_S + 2)

    @contextmanager
    def waiting(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``job_id`` changes state, for the block (on the loop)."""
        woken = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            yield woken
        finally:
            held = self._waiters.get(job_id)
            if held is not None:
                held.discard(woken)
                if not held:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for woken in self._waiters.get(job_id, ()):
            woken.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                log.warning("job events: subscription lost, resubscribing: %s", exc)
                self._stop.wait(RECONNECT_S)

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.EVENTS_CHANNEL)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None or not self._waiters:
                    continue
                job_id = _job_of(message.get("data"))
                if job_id is not None:
                    self._loop.call_soon_threadsafe(self._wake, job_id)
        finally:
            pubsub.close()


def _job_of(data: object) -> str | None:
    """The job id an event names, or None for anything else (a batch event, garbage)."""
    if not isinstance(data, str):
        return None
    try:
        event = json.loads(data)
    except ValueError:
        return None
    job = event.get("job") if isinstance(event, dict) else None
    return job if isinstance(job, str) else None
