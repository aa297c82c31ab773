"""fluxq.submit: POST an admitted job to BFL at most once, record its id first, then poll.

The job holds a slot lease from admission; each outcome keeps it (submitted) or gives it back.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from fluxq.config.celery import SUBMIT
from fluxq.config.errors import (
    FluxqError,
    OutOfCredits,
    RateLimited,
    ServerError,
    StopAndAlert,
)
from fluxq.config.redact import redact
from fluxq.tasks import lifecycle
from fluxq.tasks.admission import admit_and_dispatch
from fluxq.tasks.bfl_status import first_poll_delay_s, schedule_next_poll
from fluxq.tasks.uncertain import settle_uncertain
from fluxq.workers.backoff import backoff_s
from fluxq.workers.bfl import webhooks
from fluxq.workers.bfl.outcomes import PostOutcome, post_outcome
from fluxq.workers.bfl.responses import Submitted
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime, flower_options
from fluxq.workers.state.jobs import Job, JobField, State
from fluxq.workers.state.limiter import PauseKind

log = logging.getLogger("fluxq.submit")

SUBMIT_BACKOFF_CAP_S = 60.0

REFUSED_BACKOFF_S = (1.0, 8.0)
"""The first and the longest wait before a refused POST (503, not sent) is tried again: when BFL
comes back, every waiting slot is sending again within 8 s."""

REFUSED_RETRY_AFTER_MAX_S = 300.0
"""A Retry-After longer than this is not believed: the job tries again after this long."""


class SubmitCrashed(RuntimeError):
    """Raised when a submit failed with an error that is not BFL's answer (its text redacted)."""


def webhook_fields(rt: Runtime, job: Job) -> dict[str, str]:
    """What webhook mode adds to a job's POST: the job's ``webhook_url`` and the key's
    ``webhook_secret`` (``fluxq.api_bfl_webhooks`` checks both when BFL calls back); none when
    the mode is off."""
    settings = rt.settings
    if settings.bfl_webhook_base_url is None or settings.bfl_webhook_secret is None:
        return {}
    secret = settings.bfl_webhook_secret
    return {
        "webhook_url": webhooks.webhook_url(settings.bfl_webhook_base_url, secret, job.job_id),
        "webhook_secret": webhooks.key_secret(secret, job.key_label),
    }


def _claim(rt: Runtime, job_id: str, read: Job | None) -> Job | None:
    """The job if it is ours to POST now; None when there is nothing (more) to do. ``read`` is
    the job as its admission just read it (None: read it here); ``start_submit`` checks its
    state again atomically before the POST."""
    job = read if read is not None else rt.store.get(job_id)
    not_posting = job is None or job.state is not State.ADMITTED or job.submitting_at is not None
    if not_posting and rt.limiter.probe_extra:
        rt.limiter.end_probe(job_id)  # it will not POST now: the next probe may go
    if job is None or job.state is not State.ADMITTED:
        return None  # redelivered, cancelled or already handled
    if job.submitting_at is not None:
        # A previous attempt reached the POST and never recorded an answer (worker crash).
        settle_uncertain(rt, job, "a previous submit attempt was interrupted after sending")
        return None
    rt.limiter.hold(job_id, job.group, now_s=rt.clock(), ttl_s=rt.leases.lease_s)
    return job


def _paused(rt: Runtime, job: Job, exc: StopAndAlert) -> None:
    """402 and 401/403: stop admission for the key; the job waits at the head of its backlog."""
    if isinstance(exc, OutOfCredits):
        rt.limiter.pause(PauseKind.OUT_OF_CREDITS, str(exc))
        log.error("out of credits: admission paused label=%s job=%s", rt.label, job.job_id)
        lifecycle.requeue(rt, job, "402: out of credits; admission paused until credits return")
        return
    rt.limiter.pause(PauseKind.NOT_AUTHORISED, str(exc))
    log.critical("BFL refused the API key: admission paused label=%s: %s", rt.label, exc)
    lifecycle.requeue(rt, job, "403: the API key was refused; admission paused")


def _on_rate_limited(rt: Runtime, job: Job, exc: RateLimited) -> float | None:
    """A 429: expected for a probe (retry it soon), else a cap signal that cuts admission."""
    if rt.limiter.probe_extra:
        if rt.limiter.probe() == job.job_id:
            # The probe's own 429: BFL is full of ours, as it may be; no credit was spent.
            rt.limiter.count("probe_429")
            rt.limiter.renew_probe(job.job_id)
            rt.store.clear_fields(job.job_id, JobField.SUBMITTING_AT)
            return max(rt.settings.probe_interval_s, exc.retry_after_s or 0.0)
        if rt.limiter.held() - 1 >= rt.limiter.effective_cap(now_s=rt.clock()):
            # A probe took the slot this job was admitted for: ours fill BFL, nobody else's.
            rt.limiter.count("probe_429")
            lifecycle.requeue(rt, job, "429: a probe took the freed slot first; back at the head")
            return None
    rt.limiter.count("cap_signal_429")
    cap = rt.limiter.rate_limited(now_s=rt.clock(), retry_after_s=exc.retry_after_s)
    log.info("429 despite a free slot job=%s effective_cap=%d", job.job_id, cap)
    lifecycle.requeue(rt, job, "429: BFL's active-task cap is full (another client on this key?)")
    return None


def _on_unavailable(rt: Runtime, job: Job, exc: FluxqError, refusals: int) -> float:
    """A 503, or a POST that never left: nothing was created, so the same POST is safe to send
    again. The job keeps its slot (BFL runs nothing for it, and a slot freed now would only be
    refused too) and tries again after a backoff of its own, 1 s doubling to 8 s, or after
    Retry-After: BFL's advice for a 503 ("retry with backoff"). It never fails for it: an outage
    of an hour costs 3 refused POSTs a second at a cap of 24, and no job, slot or credit."""
    rt.store.clear_fields(job.job_id, JobField.SUBMITTING_AT)
    rt.limiter.refused(now_s=rt.clock(), detail=str(exc))
    retry_after = exc.retry_after_s if isinstance(exc, ServerError) else None
    if retry_after is not None:
        countdown_s = min(retry_after, REFUSED_RETRY_AFTER_MAX_S)
    else:
        countdown_s = backoff_s(refusals, base_s=REFUSED_BACKOFF_S[0], cap_s=REFUSED_BACKOFF_S[1])
    log.warning(
        "BFL refused a submit, nothing created; retrying in %.1f s job=%s: %s",
        countdown_s,
        job.job_id,
        exc,
    )
    return countdown_s


def _on_error(rt: Runtime, job: Job, exc: FluxqError, attempt: int) -> float | None:
    """Act on a failed POST by what it proves (``workers.bfl.outcomes``); returns a countdown
    when the same job should retry."""
    outcome = post_outcome(exc)
    if outcome is PostOutcome.RATE_LIMITED:
        assert isinstance(exc, RateLimited)
        return _on_rate_limited(rt, job, exc)
    if rt.limiter.probe_extra:
        rt.limiter.end_probe(job.job_id)  # whatever happens to it now, the next probe may go
    if outcome is PostOutcome.STOPPED:
        assert isinstance(exc, StopAndAlert)
        _paused(rt, job, exc)
    elif outcome is PostOutcome.UNAVAILABLE:
        refusals = rt.store.incr(job.job_id, JobField.REFUSED)
        return _on_unavailable(rt, job, exc, refusals)
    elif outcome is PostOutcome.UNKNOWN and not (
        isinstance(exc, ServerError) and rt.settings.submit_retry_5xx
    ):
        # BFL has no idempotency key: a task may exist, so the POST is never resent by
        # surprise (BFL's own SDK does the same); the slot is held while the task could run.
        settle_uncertain(rt, job, str(exc))
    elif outcome is PostOutcome.UNKNOWN:  # a 5xx, and the user allows resending it
        rt.store.clear_fields(job.job_id, JobField.SUBMITTING_AT)
        if attempt < rt.settings.submit_max_attempts:
            return backoff_s(
                attempt, base_s=rt.settings.retry_backoff_base_s, cap_s=SUBMIT_BACKOFF_CAP_S
            )
        lifecycle.fail(rt, job, f"submit failed {attempt} times: {exc}")
    else:
        rt.store.clear_fields(job.job_id, JobField.SUBMITTING_AT)
        lifecycle.fail(rt, job, f"not submitted: {exc}")
    return None


def _record(rt: Runtime, job: Job, submitted: Submitted, first_poll_s: float | None) -> None:
    """Record BFL's id and polling URL in one atomic step, then hand over to poll."""
    fields: dict[str, str | int | float] = {
        JobField.BFL_ID: submitted.id,
        JobField.POLLING_URL: submitted.polling_url,
    }
    if submitted.cost is not None:
        fields[JobField.COST] = submitted.cost
    if submitted.output_mp is not None:
        fields[JobField.OUTPUT_MP] = submitted.output_mp
    # In webhook mode the lease is stretched to the safety net's time before the job shows as
    # submitted: a webhook (answered "retry" until then) can only free it afterwards.
    countdown_s = schedule_next_poll(rt, job, elapsed_s=0.0, planned_s=first_poll_s)
    if countdown_s is not None and countdown_s > rt.leases.lease_s / 3:
        # The POST's short lease (renewed at most 5 s ago) might lapse before a first poll this
        # far off renews it: make it an ordinary lease now. A sooner poll renews it itself, so
        # a fast model's submit costs no round trip more.
        rt.limiter.hold(job.job_id, job.group, now_s=rt.clock())
    if not lifecycle.submitted(rt, job, fields) and not lifecycle.recover_uncertain(
        rt, job, fields
    ):
        # Another delivery of this submit recorded it first: the task is that one's to poll.
        log.warning(
            "submit answer for a job already moved on job=%s bfl_id=%s", job.job_id, submitted.id
        )
        return
    if countdown_s is not None:
        rt.dispatch.poll(job, countdown_s=countdown_s)
    if rt.limiter.probe_extra and rt.limiter.end_probe(job.job_id):
        # Accepted beyond the cap: BFL had finished one of ours. Probe again at once.
        rt.limiter.count("probe_accepted")
        admit_and_dispatch(rt)


def _unreplicated(rt: Runtime, job: Job, acked: int) -> float | None:
    """The submit marker reached too few replicas: a failover now could lose it, and a job sent
    with no marker left would be sent again. So it is not sent now: its marker is cleared and it
    tries again after a backoff of its own (1 s doubling to 8 s), keeping its slot, as after a
    503; BFL refused nothing, so nothing is counted against the key.

    A job the master has no record of was admitted by a master that is one no longer (paused
    past a failover, whose writes are lost): nothing is sent, and the current master, which
    still holds it queued, admits it again."""
    if rt.limiter.probe_extra:
        rt.limiter.end_probe(job.job_id)
    try:
        waits = rt.store.incr(job.job_id, JobField.REFUSED)
    except KeyError:
        log.warning(
            "submit marker unconfirmed and the job unknown to the Redis master now: its "
            "admission was lost with the old master; not sent job=%s", job.job_id,
        )  # fmt: skip
        return None
    rt.store.clear_fields(job.job_id, JobField.SUBMITTING_AT)
    countdown_s = backoff_s(waits, base_s=REFUSED_BACKOFF_S[0], cap_s=REFUSED_BACKOFF_S[1])
    rt.limiter.hold(job.job_id, job.group, now_s=rt.clock(), ttl_s=countdown_s + rt.leases.lease_s)
    log.warning(
        "submit marker on %d of %d Redis replicas in %d ms (FLUXQ_REDIS_MIN_REPLICAS): not sent, "
        "retrying in %.1f s job=%s",
        acked, rt.settings.redis_min_replicas, rt.settings.redis_replica_wait_ms, countdown_s,
        job.job_id,
    )  # fmt: skip
    return countdown_s


def submit_job(rt: Runtime, job_id: str, *, read: Job | None = None) -> float | None:
    """Submit one admitted job. Returns a countdown when the task should retry, else None.

    ``read``: the job as read by its admission a moment ago, so it is not read twice."""
    job = _claim(rt, job_id, read)
    if job is None:
        return None
    hook_fields = webhook_fields(rt, job)
    body = {**job.request, **hook_fields}
    # The marker (with the attempt's count) is the last write before the POST: a failure before
    # it leaves a job that was certainly not sent (requeued by the sweep), never a false
    # "uncertain".
    attempt, acked = rt.store.start_submit(job_id, now_s=rt.clock())
    if attempt == 0:  # cancelled, gone or taken by another delivery since the claim read it
        if rt.limiter.probe_extra:
            rt.limiter.end_probe(job_id)  # it will not POST: the next probe may go
        return None
    if acked < rt.store.min_replicas:
        return _unreplicated(rt, job, acked)
    try:
        with rt.leases.holding(job_id, job.group):  # a slow POST never lets its lease lapse
            submitted = rt.bfl.submit_json(job.endpoint, body)
            # The first poll's plan is made while the lease is still renewed: a new plan can
            # take seconds of CPU on a loaded machine, and a lease that lapsed meanwhile would
            # have the sweep settle this live, answered POST as uncertain.
            first_poll_s = first_poll_delay_s(rt, job)
    except FluxqError as exc:
        countdown_s = _on_error(rt, job, exc, attempt)
        if countdown_s is not None:  # the job keeps its slot until it tries again
            ttl_s = countdown_s + rt.leases.lease_s
            rt.limiter.hold(job_id, job.group, now_s=rt.clock(), ttl_s=ttl_s)
        return countdown_s
    except Exception as exc:
        # Not BFL's answer (a bug): the job stays admitted with its marker, and the sweep or a
        # redelivery settles it. Celery logs an exception's text and Flower shows it, and this
        # one may quote the body: the key's webhook secret and the job's URL token come out.
        secrets = (*rt.bfl.secrets, *hook_fields.values())
        shown = redact(f"{type(exc).__name__}: {exc}", secrets)
        raise SubmitCrashed(f"submit of job {job_id} failed: {shown}") from None
    _record(rt, job, submitted, first_poll_s)
    return None


@shared_task(name=SUBMIT.name, base=RedactedTask, bind=True, max_retries=None, acks_late=True)
def submit(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: submit the job; retry after a refusal (503, not sent), or a 5xx if allowed."""
    countdown = submit_job(runtime_of(self.app), job_id)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
