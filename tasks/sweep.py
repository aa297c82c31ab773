"""The sweep: recovers what crashes left behind, resumes after credits return, and admits.

Every worker runs it on a timer, guarded by a Redis lock so one sweep runs per interval.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from fluxq.config.errors import FluxqError
from fluxq.tasks.admission import admit_and_dispatch
from fluxq.tasks.uncertain import settle_uncertain
from fluxq.workers.runtime import Runtime
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State
from fluxq.workers.state.limiter import PauseKind

log = logging.getLogger("fluxq.sweep")

FORGET_WORKERS_AFTER_S = 86_400.0
"""A worker process silent this long leaves ``fluxq:workers``."""

SAFETY_POLLED = "safety_polled"
"""A submitted job in webhook mode polled because no webhook came by its safety-net time."""


def _recover(rt: Runtime, job_id: str, group: str, now_s: float) -> str:
    """Decide the fate of one lapsed lease; returns what was done (for counting)."""
    job = rt.store.get(job_id)
    # A doubtful hold lapses when a task its POST may have created would have ended: released
    # below like any lease of a terminal job.
    if job is None or job.state.terminal or job.state is State.QUEUED:
        rt.limiter.release(job_id, group)
        return "released"
    if job.state is State.SUBMITTED:
        # Webhook mode: no webhook ended the job by its safety-net time, so ask BFL. Otherwise
        # the poll chain was lost (worker died). BFL still counts the task: keep the slot.
        rt.limiter.hold(job_id, group, now_s=now_s)
        rt.dispatch.poll(job, countdown_s=0.0)
        return SAFETY_POLLED if rt.settings.bfl_webhook_mode else "repolled"
    if job.state is State.READY:  # its save is watched separately (resend_lost_saves)
        rt.limiter.release(job_id, group)
        return "released"
    if job.submitting_at is not None:
        # Its worker died during the POST (a live worker renews the lease every few seconds):
        # BFL may run the task, so settle_uncertain holds the slot while such a task could run.
        return settle_uncertain(rt, job, "the worker was lost while a submit may have been sent")
    rt.limiter.requeue_front(job_id, group, now_s=now_s, reason="lease lapsed before submit")
    return "requeued"


def resend_lost_saves(rt: Runtime, now_s: float) -> int:
    """Re-send the save of ready jobs whose save did not end in time (its worker died)."""
    resent = 0
    for job_id in rt.store.saves_due(rt.label, now_s=now_s):
        job = rt.store.get(job_id)
        if job is None or job.state is not State.READY:
            rt.store.unwatch_save(job_id, rt.label)
            continue
        rt.store.watch_save(job_id, rt.label, until_s=now_s + rt.settings.lease_ttl_s)
        rt.dispatch.save(job)
        resent += 1
    return resent


def _check_credits(rt: Runtime, now_s: float) -> None:
    pause = rt.limiter.paused(now_s=now_s)
    if pause is None or pause.kind is not PauseKind.OUT_OF_CREDITS:
        return
    interval_ms = int(rt.settings.credits_check_interval_s * 1000)
    if not rt.redis.set(keys.lock("credits-check"), "1", nx=True, px=interval_ms):
        return
    try:
        credits = rt.bfl.credits()
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
    if any(v for k, v in done.items() if k not in ("admitted", SAFETY_POLLED)):
        log.warning("sweep recovered %s", done)
    return done


WORKER_SEEN_SWEEPS = 3
"""A worker process counts as alive if it beat within this many sweep intervals."""


def workers_seen(rt: Runtime) -> int:
    """Worker processes that beat lately (``fluxq:workers``); raises RedisError if Redis is down."""
    since = time.time() - WORKER_SEEN_SWEEPS * rt.settings.sweep_interval_s
    return int(rt.redis.zcount(keys.WORKERS, since, "+inf"))


class SweepTimer:
    """Runs the sweep every interval in a daemon thread; one sweep per interval across workers."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.interval_s = rt.settings.sweep_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-sweep", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        """Say this worker process is alive (``fluxq:workers``); forget ones silent for a day."""
        now = time.time()
        try:
            pipe = self.rt.redis.pipeline(transaction=False)
            pipe.zadd(keys.WORKERS, {f"{socket.gethostname()}:{os.getpid()}": now})
            pipe.zremrangebyscore(keys.WORKERS, 0, now - FORGET_WORKERS_AFTER_S)
            pipe.execute()
        except redis.RedisError:
            log.info("worker heartbeat failed; will try again")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()
            try:
                lock_ms = max(1, int(self.interval_s * 900))
                if self.rt.redis.set(keys.lock("sweep"), "1", nx=True, px=lock_ms):
                    sweep(self.rt)
            except (FluxqError, redis.RedisError):
                log.exception("sweep failed; will try again")
