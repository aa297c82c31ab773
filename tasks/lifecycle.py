"""Every state change of a job after enqueue, and the one path by which a job ends.

The store refuses moves outside ``workers.state.jobs.TRANSITIONS``; this module is the only caller
of ``JobStore.transition``, so release-slot, admit-next, the save watchdog and notify happen here
and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fluxq.config.catalog import estimate_credits, validate_request
from fluxq.config.errors import InvalidRequest
from fluxq.tasks.admission import admit_and_dispatch
from fluxq.tasks.notify import notify_terminal
from fluxq.workers.runtime import Runtime
from fluxq.workers.state import histograms, keys
from fluxq.workers.state.jobs import Job, JobField, State
from fluxq.workers.state.store import ReplicaShortfall

log = logging.getLogger("fluxq.lifecycle")

Fields = Mapping[str, str | int | float]


def submitted(rt: Runtime, job: Job, fields: Fields) -> bool:
    """BFL answered the POST: record its id and polling URL, and drop the ``submitting_at``
    marker, in the same step as the move.

    A batch line's credits move from committed to spent (BFL's ``cost`` when it sent one)."""
    moved = _record_answer(rt, job, fields, State.ADMITTED)
    if moved:
        cost = fields.get(JobField.COST)
        spent = float(cost) if cost is not None else _estimate(rt, job)
        if job.est is not None:
            rt.store.account(job.batch, committed=-job.est, spent=spent)
        if spent:
            rt.limiter.count_float("credits_spent", spent)
    return moved


def _record_answer(rt: Runtime, job: Job, fields: Fields, from_state: State) -> bool:
    """Move the job from ``from_state`` to submitted with BFL's answer, held by the replicas
    FLUXQ_REDIS_MIN_REPLICAS asks for.

    Unconfirmed (a master replaced meanwhile may have taken the write and lost it), the answer
    is written once more, on the master as it is now, and the job goes on if that master holds
    it. Never dropped: its submit marker is on a replica, so the worst a later failover does is
    leave the job settled as uncertain, never sent again."""
    move: dict[str, Any] = {
        "from_states": (from_state,), "fields": fields, "clear": (JobField.SUBMITTING_AT,)
    }  # fmt: skip
    try:
        return rt.store.transition(
            job.job_id, State.SUBMITTED, now_s=rt.clock(), replicated=True, **move
        )
    except ReplicaShortfall as exc:
        log.warning("%s; recorded on the master as it is now job=%s", exc, job.job_id)
    if rt.store.transition(job.job_id, State.SUBMITTED, now_s=rt.clock(), **move):
        return True
    current = rt.store.get(job.job_id)
    return (
        current is not None
        and current.state is State.SUBMITTED
        and current.bfl_id == fields.get(JobField.BFL_ID)
    )


def requeue(rt: Runtime, job: Job, reason: str) -> bool:
    """Put an admitted job (never sent, or safe to send again) back at the head of its backlog.

    Its ``submitting_at`` marker goes in the same step: the job was not submitted."""
    return rt.limiter.requeue_front(
        job.job_id, job.group, now_s=rt.clock(), reason=reason, unsent=True
    )


def ready(rt: Runtime, job: Job, fields: Fields) -> bool:
    """BFL says Ready: the task no longer counts against the cap, so free its slot at once."""
    # Watch the save before the job becomes ready, so no crash can leave a ready job unwatched.
    rt.store.watch_save(job.job_id, job.key_label, until_s=rt.clock() + rt.settings.lease_ttl_s)
    now = rt.clock()
    # The slot goes in the move's own step: a failover may lose both, never one of them (a job
    # left submitted with no lease, no due poll and its save refused would never be seen again).
    moved = rt.store.transition(
        job.job_id, State.READY, from_states=(State.SUBMITTED,), now_s=now, fields=fields,
        leaves=rt.limiter.slot_keys(job.group),
    )  # fmt: skip
    if moved:
        admit_and_dispatch(rt)
    submitted_at = job.times.get(State.SUBMITTED.value)
    if moved and submitted_at is not None:
        histograms.observe(rt.redis, histograms.SUBMIT_TO_READY, job.endpoint, now - submitted_at)
    return moved


def end(
    rt: Runtime,
    job: Job,
    to: State,
    *,
    reason: str | None = None,
    fields: Fields | None = None,
    keep_slot: bool = False,
) -> bool:
    """End a job in ``to`` (done, failed or cancelled): the one way a job's life ends.

    Frees its slot (unless ``keep_slot``: a task we cannot see may still run at BFL) and admits
    the next job, stops watching its save, and fires its callbacks once. False when another path
    ended it first (nothing is done twice).
    """
    if not to.terminal:
        raise ValueError(f"{to.value} is not a terminal state")
    now = rt.clock()
    # Only what the job (as the caller read it) holds is given back, in the move's own step: a
    # ready job's slot went at Ready, and only a ready job's save is watched, so a done job costs
    # no extra round trip. A refused move (another path ended it first, or the table forbids it)
    # frees nothing: the path that did end it freed the slot, and a job still admitted keeps it.
    leaves = [keys.saves(job.key_label)] if job.state is State.READY else []
    freed = job.state.holds_slot and not keep_slot
    if freed:
        leaves += rt.limiter.slot_keys(job.group)
    moved = rt.store.transition(
        job.job_id, to, now_s=now, reason=reason, fields=fields, leaves=leaves
    )
    ready_at = job.times.get(State.READY.value)
    if moved and to is State.DONE and ready_at is not None:
        histograms.observe(rt.redis, histograms.READY_TO_SAVED, job.endpoint, now - ready_at)
    if moved and job.state is State.ADMITTED and job.est is not None:
        rt.store.account(job.batch, committed=-job.est)  # never sent: nothing was spent
    if moved and freed:
        admit_and_dispatch(rt)
    if moved and to is State.FAILED:
        rt.store.count_reason(job.batch, reason or "unknown")
        log.warning(
            "job failed job=%s batch=%s endpoint=%s reason=%s",
            job.job_id,
            job.batch,
            job.endpoint,
            reason,
        )
    if moved:
        notify_terminal(rt, job)
    return moved


def fail(rt: Runtime, job: Job, reason: str) -> bool:
    """End the job as failed with a reason a person can read."""
    return end(rt, job, State.FAILED, reason=reason)


def recover_uncertain(rt: Runtime, job: Job, fields: Fields) -> bool:
    """A job failed as uncertain got its POST's answer after all: it goes on to be polled.

    Its slot is held again at once (BFL runs the task), as an ordinary lease, and its failure
    is no longer counted among the batch's reasons. False when the job was not failed as
    uncertain (then nothing changes).
    """
    current = rt.store.get(job.job_id)
    if current is None or current.state is not State.FAILED or not current.uncertain:
        return False
    rt.limiter.hold(job.job_id, job.group, now_s=rt.clock())
    moved = _record_answer(rt, job, fields, State.FAILED)
    if moved:
        rt.limiter.clear_doubt(job.job_id)
        rt.store.uncount_reason(job.batch, current.reason or "unknown")
        log.warning("late submit answer recovered job=%s batch=%s", job.job_id, job.batch)
    return moved


def _estimate(rt: Runtime, job: Job) -> float:
    """A job's price when BFL sends no ``cost``: its batch line's estimate, else the catalog's."""
    if job.est is not None:
        return job.est
    catalog = rt.settings.catalog
    try:
        request = validate_request(job.endpoint, job.request, catalog=catalog)
        return estimate_credits(job.endpoint, request, catalog=catalog)
    except InvalidRequest:  # a record written before a catalog change: count nothing
        return 0.0
