"""Work a process runs on threads of its own instead of sending it through Celery: the shared
part of in-process submits (``tasks.inline_submit``) and saves (``tasks.inline_save``).

A wrapper is a Dispatcher around the process's own: one kind of work (``TASK``) runs here while
one of its threads is free (no queue in memory), everything else goes on to the inner
dispatcher. What the thread cannot finish (a countdown, an error that is not the work's own
verdict) is handed to the inner dispatcher. Flower lists each run as one task (``TaskEvents.ran``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fluxq.config.celery import TaskSpec
from fluxq.workers.runtime import Dispatcher, Runtime
from fluxq.workers.state.jobs import Job
from fluxq.workers.task_events import TaskEvents

log = logging.getLogger("fluxq.inline")


class InlineWork:
    """A Dispatcher that runs ``TASK``'s work in this process's threads; the rest goes on."""

    TASK: TaskSpec
    """The Celery task this work stands for (its name in Flower, the hand-over's kind)."""

    def __init__(
        self, rt: Runtime, inner: Dispatcher, *, threads: int, events: TaskEvents | None
    ) -> None:
        self.rt = rt
        self.inner = inner
        self.events = events
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"fluxq-{self.TASK.name.rsplit('.', 1)[-1]}"
        )
        self._free = threading.BoundedSemaphore(threads)

    # -- what a kind of work says -------------------------------------------------------------

    def _work(self, job: Job) -> float | None:
        """Do the work; a countdown when it must be tried again later, else None."""
        raise NotImplementedError

    def _send_on(self, job: Job, countdown_s: float) -> None:
        """Hand the work to the inner dispatcher."""
        raise NotImplementedError

    def _done(self) -> None:
        """After work done here (a counter, say); nothing by default."""

    # -- running it ---------------------------------------------------------------------------

    def _take(self, job: Job) -> bool:
        """Run ``job`` here if a thread is free; False (nothing taken) when all are busy."""
        if not self._free.acquire(blocking=False):
            return False
        self.run_reserved(job)
        return True

    def run_reserved(self, job: Job) -> None:
        """Run ``job`` on the thread taken for it (by ``_take`` or a subclass's reserve)."""
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # shutting down: the workers take it
            self._free.release()
            self._send_on(job, 0.0)

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        received_s = time.time()
        try:
            result = self._outcome(job)
        finally:
            self._free.release()
        if self.events is not None:
            runtime_s = round(time.monotonic() - started, 3)
            self.events.ran(
                self.TASK.name, job, result=result, runtime_s=runtime_s, received_s=received_s
            )

    def _outcome(self, job: Job) -> str:
        """Do the work; what became of it, for Flower."""
        try:
            countdown_s = self._work(job)
        except Exception:  # not the work's own verdict (Redis down, a bug): the workers take it
            log.exception("%s in this process failed; handed on job=%s", self.TASK.name, job.job_id)
            self._hand_over(job, 0.0)
            return "handed to the workers"
        if countdown_s is not None:  # to try again after a backoff: a Celery countdown
            self._hand_over(job, countdown_s)
            return f"handed to the workers: retry in {countdown_s:.1f} s"
        self._done()
        return "done"

    def _hand_over(self, job: Job, countdown_s: float) -> None:
        try:
            self._send_on(job, countdown_s)
        except Exception:  # Redis is down too: the lease lapses or the save watch ends, and
            # the sweep takes the job up again
            log.exception("could not hand %s on job=%s", self.TASK.name, job.job_id)

    def close(self) -> None:
        """Wait until every piece of work taken has ended: none is cut off midway."""
        self._pool.shutdown(wait=True)

    # -- the rest of the Dispatcher goes on -----------------------------------------------------

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self.inner.submit(job, countdown_s=countdown_s)

    def poll(self, job: Job, *, countdown_s: float) -> None:
        self.inner.poll(job, countdown_s=countdown_s)

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self.inner.save(job, countdown_s=countdown_s)

    def notify(self, job: Job) -> None:
        self.inner.notify(job)

    def callback(self, job: Job, payload: dict[str, object]) -> None:
        self.inner.callback(job, payload)
