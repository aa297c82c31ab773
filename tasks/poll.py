"""fluxq.poll: poll the polling_url verbatim and reschedule itself until BFL says it is done.

One task id per job (``self.retry``); each poll renews the slot lease; a terminal status frees it.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from fluxq.config.errors import JobFailed, RetryLater, StopAndAlert
from fluxq.tasks import lifecycle
from fluxq.workers.bfl.responses import Result, Status
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime, flower_options
from fluxq.workers.state.jobs import Job, JobField, State
from fluxq.workers.state.latency_book import size_class
from fluxq.workers.timing import backoff_s

log = logging.getLogger("fluxq.poll")

POLL_BACKOFF_CAP_S = 30.0


def size_of(job: Job) -> str:
    """The job's image-size class for the latency model (from the request's width and height)."""
    return size_class(job.request.get("width"), job.request.get("height"))


def poll_delay_s(rt: Runtime, job: Job, *, elapsed_s: float) -> float:
    """Seconds until the next poll of ``job``, from the learned plan for its endpoint and size."""
    plan = rt.latency.schedule(job.endpoint, size_of(job))
    return plan.next_delay_s(
        elapsed_s,
        min_delay_s=rt.settings.poll_min_delay_s,
        max_tail_gap_s=rt.settings.poll_max_delay_s,
    )


def schedule_next_poll(rt: Runtime, job: Job, *, elapsed_s: float) -> float | None:
    """After submit or a Pending answer: the countdown to the next poll, or None in webhook mode.

    In webhook mode BFL calls back when the task ends, and no poll is scheduled at all (no
    Celery message waits with a countdown): the job's lease is stretched to the safety net's
    time instead, and if no webhook has ended the job by then, the sweep finds the lapsed lease
    of a submitted job and polls it (``tasks.sweep``). A lease given back meanwhile (the webhook
    came) is not taken again.
    """
    if rt.settings.bfl_webhook_mode:
        until_s = rt.clock() + rt.settings.bfl_webhook_safety_poll_s
        rt.limiter.lapse_at(job.job_id, job.group, until_s=until_s)
        return None
    return poll_delay_s(rt, job, elapsed_s=elapsed_s)


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


def on_ready(rt: Runtime, job: Job, result: Result, *, seen: tuple[float, float] | None) -> bool:
    """BFL says Ready (a poll or a webhook): free the slot and save. False if already moved on.

    ``seen`` is the interval in which Ready happened, in seconds after submit: the latency
    model learns it (None when it is not known, as for a job recovered from uncertain).
    """
    fields: dict[str, str | int | float] = {}
    if result.sample_url:
        fields[JobField.SAMPLE_URL] = result.sample_url
    if result.seed is not None:
        fields[JobField.SEED] = result.seed
    if not lifecycle.ready(rt, job, fields):
        return False
    rt.limiter.count("ready")
    if seen is not None:
        rt.latency.observe(job.endpoint, size_of(job), *seen)
    rt.dispatch.save(job)
    return True


def _on_ready(rt: Runtime, job: Job, result: Result, elapsed_s: float) -> None:
    # Ready happened after the last poll that saw Pending and by this one: the interval, not
    # this poll's time, is what the latency model learns (no poll-delay bias).
    pending_s = job.last_pending_s if job.last_pending_s is not None else 0.0
    on_ready(rt, job, result, seen=(pending_s, elapsed_s))


def poll_job(rt: Runtime, job_id: str) -> float | None:
    """Poll once. Returns the countdown to the next poll, or None when polling is over."""
    job = rt.store.get(job_id)
    if job is None or job.state is not State.SUBMITTED or not job.polling_url:
        return None
    now = rt.clock()
    rt.limiter.hold(job_id, job.group, now_s=now, count="polls")  # one round trip for both
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
        fields: dict[str, str | int | float] = {JobField.LAST_PENDING_S: round(elapsed_s, 4)}
        if result.progress is not None:
            fields[JobField.PROGRESS] = result.progress
        rt.store.update(job_id, fields)
        return schedule_next_poll(rt, job, elapsed_s=elapsed_s)
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


@shared_task(name="fluxq.poll", base=RedactedTask, bind=True, max_retries=None, acks_late=True)
def poll(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: poll once and reschedule itself (same task id) while the job is Pending."""
    countdown = poll_job(runtime_of(self.app), job_id)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
