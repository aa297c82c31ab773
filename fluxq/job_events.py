"""Long polls wake on their job's own state change: one subscriber to ``fluxq:events`` per API.

A long poll used to read its job from Redis every 0.15 s: 256 of them cost about 1,700 reads a
second and pushed ``/healthz``'s p99 past 250 ms on 2 cores. Every state change already publishes
one event on ``fluxq:events`` (``lib.lua``), so one subscription, read in a thread, wakes the
waiters of that job.

The waiters' reads are shared too: every read a long poll needs (when it arrives, when its job's
event comes, every ``FALLBACK_S`` in case an event was missed, at its deadline) joins the next
batch, read in one pipeline in this module's own thread, however many polls wait. One job's
event is one read for all of its waiters; the fallback is one batch for every job waited on,
and it wakes only the waiters whose job ended. So 256 long polls cost one thread hop per tick,
not 256, and never take a token of the threadpool the other routes share (with a Redis hang,
their reads queue here alone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress

import redis

from fluxq.workers.state import keys
from fluxq.workers.state.jobs import Job

log = logging.getLogger("fluxq.api")

FALLBACK_S = 2.0
"""Every waited job is read at least this often even without an event: what a missed event
costs."""

RECONNECT_S = 1.0
"""How long the subscriber waits before subscribing again after Redis failed it."""

ReadJobs = Callable[[Sequence[str]], list[Job | None]]
"""Several job records in one round trip, in the order asked (``JobStore.get_many``)."""


class _Waiter:
    """One long poll: ``ended`` is set, with ``job``, once its job ends or is gone."""

    __slots__ = ("ended", "job")

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.job: Job | None = None


class JobEvents:
    """Wakes the long polls of a job when it ends, and reads their jobs in shared batches (see
    the module docstring). Everything but the subscriber thread runs on the loop."""

    def __init__(
        self, client: redis.Redis[str], loop: asyncio.AbstractEventLoop, read_jobs: ReadJobs
    ) -> None:
        self._client = client
        self._loop = loop
        self._read_jobs = read_jobs
        self._waiters: dict[str, set[_Waiter]] = {}
        self._next: tuple[dict[str, None], asyncio.Future[dict[str, Job | None]]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluxq-long-polls")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-job-events", daemon=True)
        self.batches = 0
        """Batches read so far (one thread hop and one Redis round trip each)."""

    def start(self) -> JobEvents:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        for task in (self._reader, self._ticker):
            if task is not None:
                task.cancel()
        self._reads.shutdown(wait=False, cancel_futures=True)
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=RECONNECT_S + 2)

    # --- on the loop --------------------------------------------------------------------------

    async def until_ended(self, job_id: str, wait_s: float) -> Job | None:
        """``job_id``'s record once it ends (a terminal state) or ``wait_s`` passes, whichever
        comes first; None when there is no such job (then, or by the time it is read)."""
        deadline = time.monotonic() + wait_s
        with self._waiting(job_id) as waiter:
            job = await self.read(job_id)  # registered first: an end from now on is not missed
            if job is None or job.state.terminal or deadline - time.monotonic() <= 0:
                return job
            with suppress(TimeoutError):
                await asyncio.wait_for(waiter.ended.wait(), deadline - time.monotonic())
            if waiter.ended.is_set():
                return waiter.job
        return await self.read(job_id)  # the deadline: the state now (it may still be running)

    async def read(self, job_id: str) -> Job | None:
        """``job_id``'s record, read in the next batch (shared with every read asked meanwhile)."""
        batch = self._join_batch([job_id])
        return (await asyncio.shield(batch))[job_id]

    @contextmanager
    def _waiting(self, job_id: str) -> Iterator[_Waiter]:
        waiter = _Waiter()
        self._waiters.setdefault(job_id, set()).add(waiter)
        if self._ticker is None or self._ticker.done():
            self._ticker = self._loop.create_task(self._tick())
        try:
            yield waiter
        finally:
            held = self._waiters.get(job_id)
            if held is not None:
                held.discard(waiter)
                if not held:
                    del self._waiters[job_id]

    def _join_batch(self, job_ids: Sequence[str]) -> asyncio.Future[dict[str, Job | None]]:
        if self._next is None:
            self._next = ({}, self._loop.create_future())
        ids, batch = self._next
        ids.update(dict.fromkeys(job_ids))
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._read_batches())
        return batch

    async def _read_batches(self) -> None:
        """Reads the pending batch, one at a time: what is asked meanwhile waits for the next."""
        while self._next is not None:
            ids, batch = self._next
            self._next = None
            job_ids = list(ids)
            try:
                jobs = await self._loop.run_in_executor(self._reads, self._read_jobs, job_ids)
            except asyncio.CancelledError:
                batch.cancel()
                raise
            except Exception as exc:  # Redis down or hung: every read of the batch says so
                batch.set_exception(exc)
                batch.exception()  # retrieved, even if every waiter has gone
                continue
            finally:
                self.batches += 1
            batch.set_result(dict(zip(job_ids, jobs, strict=True)))

    async def _tick(self) -> None:
        """Every FALLBACK_S while polls wait: one batch for every waited job (a missed event)."""
        while self._waiters:
            await asyncio.sleep(FALLBACK_S)
            if not self._waiters:
                return
            with suppress(Exception):  # logged by the polls that read through it, if any
                jobs = await asyncio.shield(self._join_batch(list(self._waiters)))
                for job_id, job in jobs.items():
                    self._ended(job_id, job)

    def _ended(self, job_id: str, job: Job | None) -> None:
        """Wakes ``job_id``'s waiters if ``job`` (as just read) has ended or is gone."""
        if job is not None and not job.state.terminal:
            return
        for waiter in self._waiters.get(job_id, ()):
            waiter.job = job
            waiter.ended.set()

    def _event(self, job_id: str) -> None:
        """An event for ``job_id``: its record, read once for all of its waiters."""
        if job_id not in self._waiters:
            return
        batch = self._join_batch([job_id])
        batch.add_done_callback(lambda done: self._after_event(job_id, done))

    def _after_event(self, job_id: str, batch: asyncio.Future[dict[str, Job | None]]) -> None:
        if not batch.cancelled() and batch.exception() is None:
            self._ended(job_id, batch.result()[job_id])

    # --- the subscriber thread ----------------------------------------------------------------

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
                # A membership test from this thread (atomic under the GIL): an event of a job
                # nobody waits for never reaches the loop.
                if job_id is not None and job_id in self._waiters:
                    self._loop.call_soon_threadsafe(self._event, job_id)
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
