"""Saves run in the worker process whose poller saw the Ready: no Celery hop per image.

In polling mode the process that serves the poll queue sees every Ready. By default it also
serves the save queue (``DEFAULT_SAVE_THREADS``: one process), so sending the save through Celery
only to take it back in the same process cost a publish, the consumer's read, the unacked
bookkeeping, the ack and three Flower events: about 10 Redis commands and a sixth of the
process's CPU per job (py-spy, 1 s latencies, ``docs/BENCHMARKS.md``). So that process's
dispatcher is wrapped: the save runs here, on threads of its own, and Flower still lists one
``fluxq.save`` task per job (``TaskEvents``).

A save runs here only while a thread is free (no queue in memory); with all busy it goes to
Celery as before. A retry after a failed download (a countdown) and any error that is not the
save's own verdict (Redis down, a bug) go to Celery too. A process that dies mid-save leaves the
job Ready with its save watched (``fluxq:saves:{k}``): the sweep sends the save again when the
watch ends (``FLUXQ_LEASE_TTL_S`` after Ready), as it does for a Celery worker that died; the
signed URL is valid 10 minutes, so the image is still there. With ``--save-threads N`` a separate
process serves the save queue and this wrapper is not installed: saves go where the user put them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fluxq.config.celery import SAVE
from fluxq.tasks.save import save_job
from fluxq.workers.runtime import Dispatcher, Runtime
from fluxq.workers.state.jobs import Job
from fluxq.workers.task_events import TaskEvents

log = logging.getLogger("fluxq.inline_save")

THREADS = 8
"""Saves running in one process at once; with all busy, saves go to Celery's threads."""

COUNTER = "inline_saves"
"""The key's counter of saves a worker process ran itself (``fluxq:stats:{k}``)."""


class InlineSaves:
    """A Dispatcher that runs saves in this process's threads and sends everything else on."""

    def __init__(
        self,
        rt: Runtime,
        inner: Dispatcher,
        *,
        threads: int = THREADS,
        events: TaskEvents | None = None,
    ) -> None:
        self.rt = rt
        self.inner = inner
        self.events = events
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fluxq-save")
        self._free = threading.BoundedSemaphore(threads)

    @classmethod
    def install(
        cls, rt: Runtime, *, threads: int = THREADS, events: TaskEvents | None = None
    ) -> InlineSaves:
        """Wrap ``rt``'s dispatcher: from now on the saves it sends run in this process."""
        inline = cls(rt, rt.dispatch, threads=threads, events=events)
        rt.dispatch = inline
        return inline

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        if countdown_s > 0 or not self._free.acquire(blocking=False):
            self.inner.save(job, countdown_s=countdown_s)
            return
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # shutting down: Celery takes it
            self._free.release()
            self.inner.save(job)

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        received_s = time.time()
        try:
            result = self._save(job)
        finally:
            self._free.release()
        if self.events is not None:
            runtime_s = round(time.monotonic() - started, 3)
            self.events.ran(
                SAVE.name, job, result=result, runtime_s=runtime_s, received_s=received_s
            )

    def _save(self, job: Job) -> str:
        """Run the save; what became of it, for Flower."""
        try:
            countdown_s = save_job(self.rt, job.job_id)
        except Exception:  # not the save's verdict (Redis down, a bug): Celery takes it over
            log.exception("save in this process failed; the workers take it job=%s", job.job_id)
            self._hand_over(job, 0.0)
            return "handed to the workers"
        if countdown_s is not None:  # a download to try again after a backoff
            self._hand_over(job, countdown_s)
            return f"handed to the workers: retry in {countdown_s:.1f} s"
        self.rt.limiter.count(COUNTER)
        return "done"

    def _hand_over(self, job: Job, countdown_s: float) -> None:
        try:
            self.inner.save(job, countdown_s=countdown_s)
        except Exception:  # Redis is down too: the save watch ends and the sweep resends it
            log.exception("could not hand the save to the workers job=%s", job.job_id)

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self.inner.submit(job, countdown_s=countdown_s)

    def poll(self, job: Job, *, countdown_s: float) -> None:
        self.inner.poll(job, countdown_s=countdown_s)

    def notify(self, job: Job) -> None:
        self.inner.notify(job)

    def callback(self, job: Job, payload: dict[str, object]) -> None:
        self.inner.callback(job, payload)

    def close(self) -> None:
        """Wait until every save taken has ended: none is cut off mid-download."""
        self._pool.shutdown(wait=True)
