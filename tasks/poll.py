"""fluxq.poll: poll the polling_url verbatim and reschedule itself until BFL says it is done.

One task id per job (``self.retry``); each poll renews the slot lease; a terminal status frees it.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from config.errors import JobFailed, RetryLater, StopAndAlert
from tasks import lifecycle
from workers.bfl.responses import Result, Status
from workers.dispatch import runtime_of
from workers.runtime import Runtime, flower_options
from workers.state import keys
from workers.state.jobs import Job, JobField, State
from workers.timing import backoff_s, next_poll_delay_s, update_median_s

log = logging.getLogger("fluxq.poll")

POLL_BACKOFF_CAP_S = 30.0
FIRST_DELAY_TO_MEDIAN = 1 / 0.9  # the first-poll setting is the delay, not the median


def median_latency_s(rt: Runtime, endpoint: str) -> float:
    """The endpoint's observed median Pending→Ready time, or the configured first delay's median."""
    value = rt.redis.get(keys.latency(endpoint))
    if value:
        return float(value)
    return rt.settings.poll_first_delay_s * FIRST_DELAY_TO_MEDIAN


def record_latency(rt: Runtime, endpoint: str, observed_s: float) -> None:
    """Move the endpoint's median estimate toward one observation (last writer wins: fine here)."""
    value = rt.redis.get(keys.latency(endpoint))
    current = float(value) if value else None
    rt.redis.set(keys.latency(endpoint), update_median_s(current, observed_s))


def poll_delay_s(rt: Runtime, endpoint: str, *, elapsed_s: float) -> float:
    return next_poll_delay_s(
        elapsed_s=elapsed_s,
        median_s=median_latency_s(rt, endpoint),
        min_delay_s=rt.settings.poll_min_delay_s,
        max_delay_s=rt.settings.poll_max_delay_s,
    )


def failure_reason(result: Result) -> str:
    """A sentence a person can act on, for each terminal status other than Ready."""
    if result.status in (Status.CONTENT_MODERATED, Status.REQUEST_MODERATED):
        reasons = ", ".join(result.moderation_reasons) or "no reason given"
        where = "the output" if result.status is Status.CONTENT_MODERATED else "the request"
        return f"{result.status.value}: BFL's moderation flagged {where} ({reasons})"
    if result.status is Status.ERROR:
        return f"Error: BFL reported that generation failed (details: {result.details or 'none'})"
    if result.status is Status.TASK_NOT_FOUND:
        return "Task not found: BFL no longer knows this task (expired or never created)"
    return f"unknown BFL status {result.raw_status!r}: treated as terminal"


def _on_ready(rt: Runtime, job: Job, result: Result, elapsed_s: float) -> None:
    fields: dict[str, str | int | float] = {}
    if result.sample_url:
        fields[JobField.SAMPLE_URL] = result.sample_url
    if result.seed is not None:
        fields[JobField.SEED] = result.seed
    if lifecycle.ready(rt, job, fields):
        record_latency(rt, job.endpoint, elapsed_s)
        rt.dispatch.save(job)


def poll_job(rt: Runtime, job_id: str) -> float | None:
    """Poll once. Returns the countdown to the next poll, or None when polling is over."""
    job = rt.store.get(job_id)
    if job is None or job.state is not State.SUBMITTED or not job.polling_url:
        return None
    now = rt.clock()
    rt.limiter.hold(job_id, job.group, now_s=now)
    elapsed_s = now - job.times.get("submitted", now)
    # The deadline is judged on BFL's answer, never before asking: after a long recovery (workers
    # down longer than the deadline) a finished, paid task is still fetched.
    overdue = elapsed_s > rt.settings.poll_deadline_s
    attempt = rt.store.incr(job_id, JobField.POLL_ATTEMPTS)
    try:
        result = rt.client.get_result(job.polling_url)
    except (RetryLater, StopAndAlert) as exc:
        if overdue:
            lifecycle.fail(
                rt,
                job,
                f"timed out: BFL could not be asked after {elapsed_s:.0f} s "
                f"(FLUXQ_POLL_DEADLINE_S; last error: {exc})",
            )
            return None
        log.info("poll will retry job=%s attempt=%d error=%s", job_id, attempt, exc)
        return backoff_s(
            min(attempt, 6), base_s=rt.settings.retry_backoff_base_s, cap_s=POLL_BACKOFF_CAP_S
        )
    except JobFailed as exc:
        lifecycle.fail(rt, job, f"polling failed: {exc}")
        return None
    if overdue and result.status is Status.PENDING:
        reason = f"timed out: still Pending after {elapsed_s:.0f} s (FLUXQ_POLL_DEADLINE_S)"
        lifecycle.fail(rt, job, reason)
        return None
    return _on_status(rt, job, result, elapsed_s)


def _on_status(rt: Runtime, job: Job, result: Result, elapsed_s: float) -> float | None:
    job_id = job.job_id
    if result.status is Status.PENDING:
        if result.progress is not None:
            rt.store.update(job_id, {JobField.PROGRESS: result.progress})
        return poll_delay_s(rt, job.endpoint, elapsed_s=elapsed_s)
    if result.status is Status.READY:
        _on_ready(rt, job, result, elapsed_s)
        return None
    if result.status is Status.TASK_NOT_FOUND:
        # It can be transient right after submit (UNCONFIRMED): tolerate a few.
        misses = rt.store.incr(job_id, JobField.NOT_FOUND_COUNT)
        if misses < rt.settings.not_found_max_polls:
            return backoff_s(misses, base_s=rt.settings.poll_min_delay_s, cap_s=POLL_BACKOFF_CAP_S)
    lifecycle.fail(rt, job, failure_reason(result))
    return None


@shared_task(name="fluxq.poll", bind=True, max_retries=None, acks_late=True)
def poll(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: poll once and reschedule itself (same task id) while the job is Pending."""
    countdown = poll_job(runtime_of(self.app), job_id)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
