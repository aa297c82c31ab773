"""fluxq.poll: poll the polling_url verbatim and reschedule itself until BFL says it is done.

One task id per job (``self.retry``); each poll renews the slot lease; what each status BFL
reports does to the job is ``tasks.bfl_status`` (shared with submit and the webhook receiver).
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from fluxq.config.celery import POLL
from fluxq.config.errors import JobFailed, RetryLater, StopAndAlert
from fluxq.tasks import lifecycle
from fluxq.tasks.bfl_status import on_end, schedule_next_poll
from fluxq.workers.backoff import backoff_s
from fluxq.workers.bfl.responses import Result, Status
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime, flower_options
from fluxq.workers.state.jobs import Job, JobField, State

log = logging.getLogger("fluxq.poll")

POLL_BACKOFF_CAP_S = 30.0


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
        result = rt.bfl.get_result(job.polling_url)
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


@shared_task(name=POLL.name, base=RedactedTask, bind=True, max_retries=None, acks_late=True)
def poll(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: poll once and reschedule itself (same task id) while the job is Pending."""
    countdown = poll_job(runtime_of(self.app), job_id)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
