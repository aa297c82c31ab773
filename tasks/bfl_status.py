"""What a job does with the status BFL reports for its task, however fluxq learned it.

A poll (``tasks.poll``), a webhook (``fluxq.api_bfl_webhooks``) and an accepted POST
(``tasks.submit``) all end here: Pending (or just accepted) waits for the next poll, or for the
webhook (``schedule_next_poll``); Ready frees the slot and sends the save (``on_ready``); any
other end fails the job with a reason a person can act on (``failure_reason``). ``on_end``
is both of the last two.
"""

from __future__ import annotations

from fluxq.tasks import lifecycle
from fluxq.workers.bfl.responses import Result, Status
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import Job, JobField
from fluxq.workers.state.latency_book import size_class


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


def first_poll_delay_s(rt: Runtime, job: Job) -> float | None:
    """The countdown to a just-submitted job's first poll; None in webhook mode (no polls)."""
    return None if rt.settings.bfl_webhook_mode else poll_delay_s(rt, job, elapsed_s=0.0)


def schedule_next_poll(
    rt: Runtime, job: Job, *, elapsed_s: float, planned_s: float | None = None
) -> float | None:
    """After submit or a Pending answer: the countdown to the next poll (``planned_s`` when it
    was worked out already), or None in webhook mode.

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
    return planned_s if planned_s is not None else poll_delay_s(rt, job, elapsed_s=elapsed_s)


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


def on_end(rt: Runtime, job: Job, result: Result, *, seen: tuple[float, float] | None) -> bool:
    """BFL says the task ended: Ready saves it (``on_ready``), any other end fails the job with
    BFL's reason. False if the job had already moved on. Not for Pending."""
    if result.status is Status.READY:
        return on_ready(rt, job, result, seen=seen)
    return lifecycle.fail(rt, job, failure_reason(result))
