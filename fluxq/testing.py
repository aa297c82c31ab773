"""Test fluxq in your own test suite: no broker, no worker process, no BFL account.

As dramatiq ships a stub broker and httpx a mock transport, fluxq ships:

* :class:`InlineDispatcher`, a dispatcher that records what Celery would be sent and runs it
  (submit → poll → save → notify) in the caller's thread, in order of due time, honouring
  countdowns;
* :func:`inline_runtime`, a :class:`~fluxq.workers.runtime.Runtime` on a Redis URL you give
  (a real Redis: fluxq's slots and job records are Lua scripts) with that dispatcher;
* the BFL simulator, :func:`running_simulator` with its :class:`SimConfig`, a faithful local
  stand-in for the BFL API on loopback ports.

A whole job, enqueued and run to its file::

    from fluxq.config.settings import load_settings
    from fluxq.tasks.enqueue import enqueue
    from fluxq.testing import SimConfig, inline_runtime, running_simulator

    with running_simulator(SimConfig(time_scale=0.01)) as sim:
        settings = load_settings(
            bfl_api_key="test-key", output_dir=tmp_path, **sim.settings_overrides()
        )
        with inline_runtime(settings, redis_url=redis_url) as inline:
            job_id = enqueue(inline.runtime, "flux-dev", {"prompt": "a heron at dawn"})
            inline.run_until_idle()
            assert inline.job(job_id).path is not None

This module never imports pytest: use it from any test runner.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import httpx

from fluxq.config.settings import Settings
from fluxq.simulator.config import SimConfig
from fluxq.simulator.server import SimulatorServer, running_simulator
from fluxq.tasks.notify import deliver_notification
from fluxq.tasks.poll import poll_job
from fluxq.tasks.save import save_job
from fluxq.tasks.submit import submit_job
from fluxq.workers.runtime import Runtime, build_runtime
from fluxq.workers.state.jobs import Job

__all__ = [
    "Due",
    "InlineDispatcher",
    "InlineRuntime",
    "SimConfig",
    "SimulatorServer",
    "inline_runtime",
    "running_simulator",
]

DEFAULT_TIMEOUT_S = 20.0
"""How long :meth:`InlineDispatcher.run_until_idle` runs before it gives up (wall-clock)."""

SUBMIT, POLL, SAVE, NOTIFY = "submit", "poll", "save", "notify"
"""The kinds of task the dispatcher records (in :attr:`InlineDispatcher.sent`)."""


@dataclass(order=True, frozen=True)
class Due:
    """One task Celery would hold until ``at_s`` (``time.monotonic()``); ordered by due time,
    then by the order it was sent."""

    at_s: float
    seq: int
    kind: str = field(compare=False)
    job_id: str = field(compare=False)
    attempt: int = field(compare=False, default=1)


def _notify(rt: Runtime, job_id: str, attempt: int) -> float | None:
    return deliver_notification(rt, job_id, attempt=attempt)


RUNNERS: dict[str, Callable[[Runtime, str, int], float | None]] = {
    SUBMIT: lambda rt, job_id, _attempt: submit_job(rt, job_id),
    POLL: lambda rt, job_id, _attempt: poll_job(rt, job_id),
    SAVE: lambda rt, job_id, _attempt: save_job(rt, job_id),
    NOTIFY: _notify,
}
"""What a worker runs for each kind: the task's logic, which returns a countdown to retry."""


class InlineDispatcher:
    """A dispatcher that records what Celery would be sent, and runs it in the caller's thread.

    Give it to :func:`inline_runtime` (or to ``build_runtime(dispatch=...)``); then
    :meth:`step` runs the next task that is due (sleeping until it is) and :meth:`run_until_idle`
    runs tasks until none is left. A task that asks to be retried is scheduled again after its
    countdown, as Celery would. User callbacks (Celery signatures) are recorded, not run.

    Not thread-safe: one test thread drives it.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.heap: list[Due] = []
        """The tasks waiting to run: a :mod:`heapq` ordered by due time. A test may look at it,
        or clear it to stand for a worker that lost its messages."""
        self.sent: list[tuple[str, str]] = []
        """Every ``(kind, job_id)`` sent, in order (retries scheduled by :meth:`step` are not)."""
        self.callbacks: list[dict[str, object]] = []
        """The payload of every user callback (a Celery signature) a terminal job sent."""
        self._clock = clock
        self._sleep = sleep
        self._seq = itertools.count()

    # -- the Dispatcher protocol (what fluxq's tasks call) ----------------------------------

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self._send(SUBMIT, job.job_id, countdown_s)

    def poll(self, job: Job, *, countdown_s: float) -> None:
        self._send(POLL, job.job_id, countdown_s)

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self._send(SAVE, job.job_id, countdown_s)

    def notify(self, job: Job) -> None:
        self._send(NOTIFY, job.job_id, 0.0)

    def callback(self, job: Job, payload: dict[str, object]) -> None:
        self.callbacks.append(payload)

    # -- looking and running ------------------------------------------------------------------

    def kinds(self, job_id: str) -> list[str]:
        """The kinds sent for ``job_id``, in order (e.g. ``["submit", "poll", "save"]``)."""
        return [kind for kind, jid in self.sent if jid == job_id]

    @property
    def idle(self) -> bool:
        """True when nothing is scheduled."""
        return not self.heap

    def step(self, rt: Runtime) -> bool:
        """Run the next due task on ``rt``, sleeping until it is due; False when none is left."""
        if not self.heap:
            return False
        due = heapq.heappop(self.heap)
        self._sleep(max(0.0, due.at_s - self._clock()))
        countdown = RUNNERS[due.kind](rt, due.job_id, due.attempt)
        if countdown is not None:
            self._schedule(due.kind, due.job_id, countdown, due.attempt + 1)
        return True

    def run_until_idle(self, rt: Runtime, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
        """Run tasks on ``rt`` until none is scheduled; the number run.

        Raises TimeoutError when work is still scheduled after ``timeout_s`` (a job that keeps
        retrying, or countdowns longer than the test allows).
        """
        deadline = self._clock() + timeout_s
        ran = 0
        while self.step(rt):
            ran += 1
            if self._clock() >= deadline and self.heap:
                waiting = sorted((due.kind, due.job_id) for due in self.heap)
                raise TimeoutError(f"still scheduled after {timeout_s} s: {waiting}")
        return ran

    drain = run_until_idle

    def _send(self, kind: str, job_id: str, countdown_s: float) -> None:
        self.sent.append((kind, job_id))
        self._schedule(kind, job_id, countdown_s, 1)

    def _schedule(self, kind: str, job_id: str, countdown_s: float, attempt: int) -> None:
        due = Due(self._clock() + countdown_s, next(self._seq), kind, job_id, attempt)
        heapq.heappush(self.heap, due)


@dataclass
class InlineRuntime:
    """A Runtime and its InlineDispatcher together; closes the Runtime on leaving a ``with``."""

    runtime: Runtime
    dispatcher: InlineDispatcher

    def step(self) -> bool:
        """Run the next due task; False when nothing is scheduled."""
        return self.dispatcher.step(self.runtime)

    def run_until_idle(self, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
        """Run tasks until none is scheduled (see :meth:`InlineDispatcher.run_until_idle`)."""
        return self.dispatcher.run_until_idle(self.runtime, timeout_s=timeout_s)

    drain = run_until_idle

    def job(self, job_id: str) -> Job:
        """The job's record in Redis; KeyError when there is none."""
        job = self.runtime.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> InlineRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def inline_runtime(
    settings: Settings,
    *,
    redis_url: str | None = None,
    dispatcher: InlineDispatcher | None = None,
    transport: httpx.BaseTransport | None = None,
) -> InlineRuntime:
    """A Runtime on ``redis_url`` (default: ``settings.redis_url``) whose tasks run inline.

    ``dispatcher`` defaults to a new :class:`InlineDispatcher`; ``transport`` replaces the BFL
    client's HTTP transport (an ``httpx.MockTransport``, say) when the simulator is not wanted.
    The caller closes it (or uses it in a ``with`` block).
    """
    url = redis_url if redis_url is not None else settings.redis_url
    if url is None:
        raise ValueError("inline_runtime needs a Redis URL: redis_url= or settings.redis_url")
    inline = dispatcher if dispatcher is not None else InlineDispatcher()
    rt = build_runtime(settings, redis_url=url, dispatch=inline, transport=transport)
    return InlineRuntime(runtime=rt, dispatcher=inline)
