"""Control work: the ``fluxq.enqueue`` task for other services, and the sweep that recovers crashes.

The sweep runs in every worker on a timer, guarded by a Redis lock so one runs per interval.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Task, signals

from config.errors import FluxqError
from tasks.admission import admit_and_dispatch
from tasks.producer import enqueue as enqueue_job
from tasks.save import resend_lost_saves
from tasks.submit import settle_uncertain
from workers import keys
from workers.celery_app import app
from workers.runtime import Runtime, get_runtime
from workers.store import State

log = logging.getLogger("fluxq.sweep")

CREDITS_PAUSE_PREFIX = "out of credits"


@app.task(name="fluxq.enqueue", bind=True, acks_late=True)
def enqueue(self: Task, request: dict[str, Any], endpoint: str, **options: Any) -> str:
    """Celery task for other services: kwargs ``request`` (JSON), ``endpoint`` and optional
    ``job_id``, ``batch``, ``name``, ``priority``, ``callback``, ``webhook_url``.

    Without a job_id the message's task id is used: a redelivered message (a worker died
    before acking) then finds its job already there instead of creating and billing another.
    """
    options.setdefault("job_id", self.request.id)
    return enqueue_job(get_runtime(), endpoint, request, **options)


def _recover(rt: Runtime, job_id: str, group: str, now_s: float) -> str:
    """Decide the fate of one lapsed lease; returns what was done (for counting)."""
    job = rt.store.get(job_id)
    if job is None or job.state.terminal or job.state is State.QUEUED:
        rt.limiter.release(job_id, group)
        return "released"
    if job.state is State.SUBMITTED:
        # The poll chain was lost (worker died): BFL still counts the task, so keep the slot.
        rt.limiter.hold(job_id, group, now_s=now_s)
        rt.dispatch.poll(job, countdown_s=0.0)
        return "repolled"
    if job.state is State.READY:  # its save is watched separately (resend_lost_saves)
        rt.limiter.release(job_id, group)
        return "released"
    if job.submitting_at is not None:
        action = settle_uncertain(rt, job, "the lease lapsed after a submit may have been sent")
        rt.limiter.release(job_id, group)  # the lease already outlived any task we could not see
        return action
    rt.limiter.requeue_front(job_id, group, now_s=now_s, reason="lease lapsed before submit")
    return "requeued"


def _check_credits(rt: Runtime, now_s: float) -> None:
    reason = rt.limiter.paused(now_s=now_s)
    if not reason or not reason.startswith(CREDITS_PAUSE_PREFIX):
        return
    interval_ms = int(rt.settings.credits_check_interval_s * 1000)
    if not rt.redis.set(keys.lock("credits-check"), "1", nx=True, px=interval_ms):
        return
    try:
        credits = rt.client.credits()
    except FluxqError as exc:
        log.info("credit check failed: %s", exc)
        return
    if credits > 0:
        log.warning("credits are back (%.2f): admission resumes label=%s", credits, rt.label)
        rt.limiter.resume()


def sweep(rt: Runtime) -> dict[str, int]:
    """Recover lapsed leases, resume after credits return, and admit; returns counts by action."""
    now = rt.clock()
    done: dict[str, int] = {}
    for job_id, group in rt.limiter.expired(now_s=now):
        action = _recover(rt, job_id, group, now)
        done[action] = done.get(action, 0) + 1
    done["resaved"] = resend_lost_saves(rt, now)
    _check_credits(rt, now)
    done["admitted"] = admit_and_dispatch(rt)
    if any(v for k, v in done.items() if k != "admitted"):
        log.warning("sweep recovered %s", done)
    return done


class SweepTimer:
    """Runs the sweep every interval in a daemon thread; one sweep per interval across workers."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                rt = get_runtime()
                lock_ms = max(1, int(self.interval_s * 900))
                if rt.redis.set(keys.lock("sweep"), "1", nx=True, px=lock_ms):
                    sweep(rt)
            except (FluxqError, redis.RedisError):
                log.exception("sweep failed; will try again")


_timer: SweepTimer | None = None


@signals.worker_ready.connect
def _start_sweep(**_: Any) -> None:
    global _timer
    _timer = SweepTimer(get_runtime().settings.sweep_interval_s)
    _timer.start()


@signals.worker_shutdown.connect
def _stop_sweep(**_: Any) -> None:
    if _timer is not None:
        _timer.stop()
