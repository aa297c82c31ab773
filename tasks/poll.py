"""Polling: ask the polling_url verbatim, again and again, until BFL says the task ended.

A job waiting for its next poll sits in its key's poll queue (``fluxq:polls:{k}``, by due time).
Each worker process that serves the poll queue runs a ``Poller``: a thread that claims the due
jobs in one Redis round trip and polls them on a few threads with one HTTP client (connections
reused), then puts each back with its next due time or takes it out. A poll is not a Celery
message: no publish, consume, ack or Flower events per poll. Flower still shows one task per job
for its polling (``TaskEvents``: received at its first poll, succeeded at its last).

Each poll renews the slot lease; what each status BFL reports does to the job is
``tasks.bfl_status`` (shared with submit and the webhook receiver). The ``fluxq.poll`` Celery
task remains for messages sent by name: it polls once and hands the job to the poll queue.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from celery import Task, shared_task

from fluxq.config.celery import POLL
from fluxq.config.endpoint_spec import IMAGE
from fluxq.config.errors import JobFailed, RetryLater, StopAndAlert
from fluxq.tasks import lifecycle
from fluxq.tasks.bfl_status import on_end, schedule_next_poll
from fluxq.workers.backoff import backoff_s
from fluxq.workers.bfl.responses import Result, Status
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import Job, JobField, State
from fluxq.workers.task_events import TaskEvents

log = logging.getLogger("fluxq.poll")

POLL_BACKOFF_CAP_S = 30.0


@dataclass(frozen=True)
class Polled:
    """One poll: the countdown to the next (None: polling is over), the job as it was before the
    poll (None: gone or not submitted, so not polled), and which poll of the job it was."""

    countdown_s: float | None
    job: Job | None = None
    attempt: int = 0


def poll_job(rt: Runtime, job_id: str) -> float | None:
    """Poll once. Returns the countdown to the next poll, or None when polling is over."""
    return poll_once(rt, job_id).countdown_s


def poll_once(rt: Runtime, job_id: str) -> Polled:
    """Poll once (``poll_job``), saying which poll it was."""
    job = rt.store.get(job_id)
    if job is None or job.state is not State.SUBMITTED or not job.polling_url:
        return Polled(None)
    attempt, countdown_s = _ask(rt, job, job.polling_url)
    return Polled(countdown_s, job, attempt)


def _ask(rt: Runtime, job: Job, polling_url: str) -> tuple[int, float | None]:
    job_id = job.job_id
    now = rt.clock()
    # The lease, the key's poll counter and the job's attempt in one round trip (the job was
    # just read as submitted, which never expires: the attempt creates no stray record)
    attempt = rt.limiter.hold(
        job_id, job.group, now_s=now, count="polls", job_counter=JobField.POLL_ATTEMPTS
    )
    elapsed_s = now - job.times.get("submitted", now)
    # The deadline is judged on BFL's answer, never before asking: after a long recovery (workers
    # down longer than the deadline) a finished, paid task is still fetched.
    overdue = elapsed_s > poll_deadline_s(rt, job)
    try:
        result = rt.bfl.get_result(polling_url)
    except (RetryLater, StopAndAlert) as exc:
        if overdue:
            lifecycle.fail(
                rt,
                job,
                f"timed out: BFL could not be asked after {elapsed_s:.0f} s "
                f"(FLUXQ_POLL_DEADLINE_S; last error: {exc})",
            )
            return attempt, None
        log.info("poll will retry job=%s attempt=%d error=%s", job_id, attempt, exc)
        return attempt, backoff_s(
            min(attempt, 6), base_s=rt.settings.retry_backoff_base_s, cap_s=POLL_BACKOFF_CAP_S
        )
    except JobFailed as exc:
        lifecycle.fail(rt, job, f"polling failed: {exc}")
        return attempt, None
    if overdue and result.status is Status.PENDING:
        reason = f"timed out: still Pending after {elapsed_s:.0f} s (FLUXQ_POLL_DEADLINE_S)"
        lifecycle.fail(rt, job, reason)
        return attempt, None
    return attempt, _on_status(rt, job, result, elapsed_s)


def poll_deadline_s(rt: Runtime, job: Job) -> float:
    """How long the job may stay Pending: FLUXQ_POLL_DEADLINE_S for an image, a multiple of it
    for a video (``Settings.poll_deadline_s_for``); an endpoint the catalog no longer has is
    judged as an image."""
    spec = rt.settings.catalog.get(job.endpoint)
    return rt.settings.poll_deadline_s_for(spec.media if spec is not None else IMAGE)


def _on_status(rt: Runtime, job: Job, result: Result, elapsed_s: float) -> float | None:
    job_id = job.job_id
    if result.status is Status.PENDING:
        fields: dict[str, str | int | float] = {JobField.LAST_PENDING_S: round(elapsed_s, 4)}
        if result.progress is not None:
            fields[JobField.PROGRESS] = result.progress
        rt.store.update_submitted(job_id, fields)  # read as submitted at this poll's start
        return schedule_next_poll(rt, job, elapsed_s=elapsed_s)
    if result.status is Status.TASK_NOT_FOUND:
        # It can be transient right after submit (UNCONFIRMED): tolerate a few.
        misses = rt.store.incr(job_id, JobField.NOT_FOUND_COUNT)
        if misses < rt.settings.not_found_max_polls:
            return backoff_s(misses, base_s=rt.settings.poll_min_delay_s, cap_s=POLL_BACKOFF_CAP_S)
    # Ready happened after the last poll that saw Pending and by this one: the interval, not
    # this poll's time, is what the latency model learns (no poll-delay bias).
    pending_s = job.last_pending_s if job.last_pending_s is not None else 0.0
    on_end(rt, job, result, seen=(pending_s, elapsed_s))
    return None


POLLER_IDLE_S = 0.25
"""A poller with nothing due looks at its poll queue at least this often. It sleeps no later than
the next due poll it knows of; a job this process puts in wakes it if it is due sooner, and a job
another process put in, due sooner, is polled at most this late. Each look is one claim (a script
call, about 1 ms of CPU): a 50 ms timer cost a worker 17 % of its CPU at a 5 s median."""


def claim_s(rt: Runtime) -> float:
    """How long a claimed poll is left to its poller: the longest one GET can take (connect,
    pool wait and read timeouts). A poller that died mid-poll has its jobs polled again then."""
    s = rt.settings
    return s.http_connect_timeout_s + s.http_pool_timeout_s + s.http_read_timeout_s


def poll_claimed(rt: Runtime, job_id: str, events: TaskEvents | None = None) -> None:
    """Poll a claimed job once and put it back in the poll queue, or take it out."""
    polled = poll_once(rt, job_id)
    if polled.countdown_s is None:
        rt.polls.remove(job_id)
    else:
        rt.polls.add(job_id, due_s=rt.clock() + polled.countdown_s)
    if events is None or polled.job is None:
        return
    # Flower: one fluxq.poll task per job, received at its first poll, ended with its last
    if polled.attempt == 1:
        events.started(POLL.name, polled.job)
    if polled.countdown_s is None:
        began = polled.job.times.get("submitted", rt.clock())
        runtime_s = round(rt.clock() - began, 3)
        events.succeeded(
            POLL.name, polled.job, result=f"{polled.attempt} polls", runtime_s=runtime_s
        )


class Poller:
    """Polls the due jobs of this worker's key on ``threads`` threads of its own."""

    def __init__(
        self,
        rt: Runtime,
        *,
        threads: int,
        events: TaskEvents | None = None,
        idle_s: float = POLLER_IDLE_S,
    ) -> None:
        self.rt = rt
        self.events = events
        self.threads = threads
        self.idle_s = idle_s
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fluxq-poll")
        self._free = threads
        self._lock = threading.Lock()
        self._wake = rt.polls.wakeup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Claim nothing more, and wait up to ``timeout_s`` for the polls under way."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        queue = self.rt.polls
        while not self._stop.is_set():
            queue.next_look_s = math.inf  # an add from here until the wait wakes it at once
            self._wake.clear()
            with self._lock:
                free = self._free
            if free == 0:  # every thread busy: a finishing poll wakes the loop
                self._wake.wait(self.idle_s)
                continue
            now = self.rt.clock()
            try:
                claim = self.rt.polls.claim(now_s=now, limit=free, claim_s=claim_s(self.rt))
            except redis.RedisError as exc:
                log.warning("poller cannot reach Redis (%s); will try again", exc)
                self._stop.wait(1.0)
                continue
            for job_id in claim.job_ids:
                with self._lock:
                    self._free -= 1
                self._pool.submit(self._poll, job_id)
            if len(claim.job_ids) == free:  # threads were the limit: more may be due now
                continue
            # Fewer than asked: nothing else is due yet. Looking again at once would be one
            # empty claim per round (about 2 a job, 8 Redis commands, in the 1 s bench).
            wait_s = self.idle_s
            if claim.next_due_s is not None:
                wait_s = min(wait_s, max(0.0, claim.next_due_s - now))
            # Only a job due before this wake-up (or a thread freed while all were busy) wakes
            # the loop early: each look is a claim, and most adds are due later than the next.
            queue.next_look_s = now + wait_s
            self._wake.wait(wait_s)

    def _poll(self, job_id: str) -> None:
        try:
            poll_claimed(self.rt, job_id, self.events)
        except Exception:  # a bug or Redis gone: the claim ends and the job is polled again
            log.exception("poll of job=%s failed; it is polled again when its claim ends", job_id)
        finally:
            with self._lock:
                self._free += 1
                was_full = self._free == 1
            if was_full:  # the loop waits for a free thread
                self._wake.set()


@shared_task(name=POLL.name, base=RedactedTask, bind=True, max_retries=None, acks_late=True)
def poll(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task, for a poll sent by name: poll once, then leave the job to the poll queue."""
    rt = runtime_of(self.app)
    countdown = poll_job(rt, job_id)
    if countdown is not None:
        rt.polls.add(job_id, due_s=rt.clock() + countdown)
