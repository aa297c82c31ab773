"""Saves run in the worker processes that serve ``fluxq.save``, on threads of their own: no
Celery message per image.

In polling mode the process that serves the poll queue sees every Ready, and by default it also
serves the save queue (``DEFAULT_SAVE_THREADS``: one process): sending the save through Celery
only to take it back in the same process cost a publish, the consumer's read, the unacked
bookkeeping, the ack and three Flower events, about 10 Redis commands and a sixth of the
process's CPU per job (py-spy, 1 s latencies, ``docs/BENCHMARKS.md``). So that process's
dispatcher is wrapped (``InlineSaves``): the save runs here while one of its threads is free.
Any other save due now (``fluxq api`` after a webhook, a process with its threads busy, the
sweep) goes into the key's save queue (``fluxq.workers.state.save_queue``), which every process
serving ``fluxq.save`` takes from while a thread is free (``SaveConsumer``). Flower still lists
one ``fluxq.save`` task per job (``TaskEvents``).

A retry after a failed download (a countdown) and any error that is not the save's own verdict
(Redis down, a bug) go to Celery. A process that dies mid-save leaves the job Ready with its save
watched (``fluxq:saves:{k}``): the sweep sends the save again when the watch ends
(``FLUXQ_LEASE_TTL_S`` after Ready), as it does for a Celery worker that died; the signed URL is
valid 10 minutes, so the image is still there.
"""

from __future__ import annotations

import logging
import threading

import redis

from fluxq.config.celery import SAVE
from fluxq.tasks.inline_work import InlineWork
from fluxq.tasks.save import save_job
from fluxq.workers.runtime import Dispatcher, Runtime
from fluxq.workers.state.jobs import Job, State
from fluxq.workers.state.save_queue import SaveQueue
from fluxq.workers.task_events import TaskEvents

log = logging.getLogger("fluxq.inline_save")

THREADS = 8
"""Saves running in one process at once; with all busy, saves go to Celery's threads."""

COUNTER = "inline_saves"
"""The key's counter of saves a worker process ran itself (``fluxq:stats:{k}``)."""


class InlineSaves(InlineWork):
    """A Dispatcher that runs saves in this process's threads and sends everything else on."""

    TASK = SAVE

    def __init__(
        self,
        rt: Runtime,
        inner: Dispatcher,
        *,
        threads: int = THREADS,
        events: TaskEvents | None = None,
    ) -> None:
        super().__init__(rt, inner, threads=threads, events=events)

    @classmethod
    def install(
        cls, rt: Runtime, *, threads: int = THREADS, events: TaskEvents | None = None
    ) -> InlineSaves:
        """Wrap ``rt``'s dispatcher: from now on the saves it sends run in this process."""
        inline = cls(rt, rt.dispatch, threads=threads, events=events)
        rt.dispatch = inline
        return inline

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        # A countdown, or every thread busy: into the save queue (or Celery, for a countdown)
        if countdown_s > 0 or not self._take(job):
            self.inner.save(job, countdown_s=countdown_s)

    def reserve(self, timeout_s: float) -> bool:
        """Take a free save thread, waiting up to ``timeout_s``; False when none freed up."""
        return self._free.acquire(timeout=timeout_s)

    def release(self) -> None:
        """Give back a thread ``reserve`` took and did not use."""
        self._free.release()

    def _work(self, job: Job) -> float | None:
        return save_job(self.rt, job.job_id)

    def _send_on(self, job: Job, countdown_s: float) -> None:
        self.inner.save(job, countdown_s=countdown_s)

    def _done(self) -> None:
        self.rt.limiter.count(COUNTER)


CONSUMER_WAIT_S = 1.0
"""How long the consumer waits for a free save thread, and then for a due save, before it looks
at its stop flag again: what stopping a worker process can take longer."""


class SaveConsumer:
    """Takes due saves from the key's save queue (``fluxq:savequeue:{k}``) while one of this
    process's save threads is free, and runs them there. A process with every thread busy
    leaves the queue to the others."""

    def __init__(
        self, rt: Runtime, saves: InlineSaves, queue: SaveQueue, *, wait_s: float = CONSUMER_WAIT_S
    ) -> None:
        self.rt = rt
        self.saves = saves
        self.queue = queue
        self.wait_s = wait_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-save-queue", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Take nothing more; the saves under way end with ``InlineSaves.close``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.saves.reserve(self.wait_s):
                continue
            try:
                job = self._next()
            except redis.RedisError as exc:
                self.saves.release()
                log.warning("save queue unreachable (%s); will try again", exc)
                self._stop.wait(self.wait_s)
                continue
            except Exception:  # a bug: the save watch resends whatever was taken
                self.saves.release()
                log.exception("save queue consumer failed; the sweep resends lost saves")
                self._stop.wait(self.wait_s)
                continue
            if job is None:
                self.saves.release()
            else:
                self.saves.run_reserved(job)

    def _next(self) -> Job | None:
        """The next due save's job, if it is still Ready (a duplicate finds it done: skipped)."""
        job_id = self.queue.pop(timeout_s=self.wait_s)
        if job_id is None:
            return None
        job = self.rt.store.get(job_id)
        return job if job is not None and job.state is State.READY else None
