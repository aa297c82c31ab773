"""Submits run in the process that admitted the job, in its own threads: no Celery hop per slot.

A slot freed by a Ready is refilled by the process that saw the Ready: ``fluxq api`` in webhook
mode (the webhook's request), a worker's poller in polling mode. Handing the next job to a worker
through Celery (the publish, the worker's consumer and pool, the ack) left the slot idle 39 ms at
the median at 1 s latencies on a 2-core machine, against 25 ms when the same ``submit_job`` runs
in a thread of the process that admitted the job (``docs/BENCHMARKS.md``, same run). So that
process's dispatcher is wrapped: submits run here, everything else (polls, saves, callbacks) goes
on as before. Flower still lists each such submit as a ``fluxq.submit`` task (``TaskEvents``).

A submit runs here only while a thread is free (no queue in memory: a process that dies leaves
nothing admitted and unsent but its POSTs in flight), and only while some worker is alive to save
its image (the workers' heartbeat in ``fluxq:workers``, read at most once a second): otherwise it
goes to Celery and waits there, unpaid, as before. Anything the thread cannot finish also goes to
the workers: a retry countdown, or an error that is not BFL's answer (the workers' claim then
treats a POST that may have been sent as uncertain, as for a crashed worker). A process that dies
with submits in its pool leaves admitted jobs holding leases; when the leases lapse the sweep
requeues them, or settles as uncertain one whose POST had gone (its webhook or late answer, if it
comes, recovers it).
"""

from __future__ import annotations

import threading
import time

import redis

from fluxq.config.celery import SUBMIT
from fluxq.tasks.inline_work import InlineWork
from fluxq.tasks.submit import submit_job
from fluxq.tasks.sweep import workers_seen
from fluxq.workers.runtime import Dispatcher, Runtime
from fluxq.workers.state.jobs import Job
from fluxq.workers.task_events import TaskEvents

THREADS = 8
"""POSTs in flight from one process at once: each takes milliseconds, and a POST that hangs holds
one thread only until the HTTP timeouts end it; with all busy, submits go to Celery."""

WORKERS_CHECK_S = 1.0
"""How long one reading of the workers' heartbeat is trusted."""

COUNTER = "api_submits"
"""The key's counter of submits ``fluxq api`` ran itself (``fluxq:stats:{k}``)."""

WORKER_COUNTER = "inline_submits"
"""The key's counter of submits a worker process ran itself, after a Ready its poller saw."""


class InlineSubmits(InlineWork):
    """A Dispatcher that runs submits in this process's threads and sends everything else on."""

    TASK = SUBMIT

    def __init__(
        self,
        rt: Runtime,
        inner: Dispatcher,
        *,
        threads: int = THREADS,
        counter: str | None = COUNTER,
        events: TaskEvents | None = None,
    ) -> None:
        super().__init__(rt, inner, threads=threads, events=events)
        self.counter = counter
        """The key's counter of the submits run here (None: not counted, no round trip)."""
        self._lock = threading.Lock()
        self._workers_until = 0.0  # monotonic time until which workers count as seen

    @classmethod
    def install(
        cls,
        rt: Runtime,
        *,
        threads: int = THREADS,
        counter: str | None = COUNTER,
        events: TaskEvents | None = None,
    ) -> InlineSubmits:
        """Wrap ``rt``'s dispatcher: from now on the submits it sends run in this process."""
        inline = cls(rt, rt.dispatch, threads=threads, counter=counter, events=events)
        rt.dispatch = inline
        return inline

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None:
        # A countdown, no worker alive to save the image, or every thread busy: to Celery
        if countdown_s > 0 or not self._workers_alive() or not self._take(job):
            self.inner.submit(job, countdown_s=countdown_s)

    def _workers_alive(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._workers_until:
                return True
        try:
            alive = workers_seen(self.rt) > 0
        except redis.RedisError:
            return False  # Celery's own send will say what is wrong with Redis
        if alive:
            with self._lock:
                self._workers_until = now + WORKERS_CHECK_S
        return alive

    def _work(self, job: Job) -> float | None:
        # An error here that is not BFL's answer hands the job to the workers, whose claim
        # treats a POST that may have been sent as uncertain, as for a crashed worker.
        return submit_job(self.rt, job.job_id, read=job)

    def _send_on(self, job: Job, countdown_s: float) -> None:
        self.inner.submit(job, countdown_s=countdown_s)

    def _done(self) -> None:
        if self.counter is not None:
            self.rt.limiter.count(self.counter)
