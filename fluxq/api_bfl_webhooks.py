"""Webhook mode: BFL calls ``fluxq api`` back when a task ends, and its job moves on at once.

Submit adds the job's ``webhook_url`` and the key's ``webhook_secret`` to each POST
(``tasks.submit.webhook_fields``); ``receive``, run by ``fluxq api``'s webhook route, settles what
arrives, through the same ``tasks.bfl_status`` a poll uses. Polls remain as a slow safety net
(``tasks.bfl_status.schedule_next_poll``), and a webhook for a job whose POST got no answer
(uncertain) proves the task exists: the job is recovered and saved, never submitted again.

Every delivery gets an answer (``Answer``): a forged one is refused and counted; one for an
unknown, finished or other task is acknowledged and ignored, so BFL stops retrying it; one that
arrives while the job's own POST is still out asks BFL to retry a little later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum

from fluxq.config.errors import UnexpectedResponse
from fluxq.tasks import lifecycle
from fluxq.tasks.bfl_status import on_end
from fluxq.workers.bfl import webhooks
from fluxq.workers.bfl.responses import Result, Status
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import Job, JobField, State

log = logging.getLogger("fluxq.bfl_webhook")  # its name since before it moved beside the API


class Answer(StrEnum):
    """What a webhook did; ``fluxq api`` maps each to an HTTP status."""

    SETTLED = "settled"  # the job moved on: Ready (saving) or failed with BFL's reason
    RECOVERED = "recovered"  # an uncertain job's task exists after all: recovered and settled
    IGNORED = "ignored"  # authentic but nothing to do: unknown job, finished, another task
    RETRY = "retry"  # the job's own POST is still out: BFL should deliver again later
    FORGED = "forged"  # a wrong token or secret: refused and counted
    DISABLED = "disabled"  # webhook mode is off here


def receive(rt: Runtime, job_id: str, token: str, headers: Mapping[str, str], raw: bytes) -> Answer:
    """Check one delivery to ``…/{job_id}/{token}`` and act on it."""
    secret = rt.settings.bfl_webhook_secret
    if not rt.settings.bfl_webhook_mode or secret is None:
        return Answer.DISABLED
    if not webhooks.token_matches(secret, job_id, token):
        rt.limiter.count("bfl_webhooks_forged")
        log.warning("webhook refused: wrong token for job=%s", job_id)
        return Answer.FORGED
    job = rt.store.get(job_id)
    if job is None:
        rt.limiter.count("bfl_webhooks_ignored")
        return Answer.IGNORED  # expired or forgotten: nothing left to move
    if not webhooks.authentic(headers, raw, webhooks.key_secret(secret, job.key_label)):
        rt.limiter.count("bfl_webhooks_forged")
        log.warning("webhook refused: no valid secret or signature for job=%s", job_id)
        return Answer.FORGED
    try:
        result = webhooks.parse_delivery(raw, secrets=rt.bfl.secrets)
    except UnexpectedResponse as exc:
        rt.limiter.count("bfl_webhooks_ignored")
        log.warning("webhook ignored for job=%s: %s", job_id, exc)
        return Answer.IGNORED
    answer = _act(rt, job, result)
    if answer is Answer.RETRY:
        rt.limiter.count("bfl_webhooks_retry")
        return answer
    rt.limiter.count("bfl_webhooks")
    if answer is Answer.IGNORED:
        rt.limiter.count("bfl_webhooks_ignored")
    return answer


def _act(rt: Runtime, job: Job, result: Result) -> Answer:
    if job.state is State.SUBMITTED:
        if job.bfl_id and result.id != job.bfl_id:
            return Answer.IGNORED  # an earlier attempt's task, resubmitted since
        return _settle(rt, job, result, recovered=False)
    if job.state is State.FAILED and job.uncertain and result.status is not Status.PENDING:
        # The POST's answer never came, yet BFL calls this job's URL: the task exists and was
        # billed. Take its id from the webhook and go on as if the answer had arrived.
        fields: dict[str, str | int | float] = {
            JobField.BFL_ID: result.id,
            JobField.POLLING_URL: f"{rt.settings.bfl_base_url}/v1/get_result?id={result.id}",
        }
        if not lifecycle.recover_uncertain(rt, job, fields):
            return Answer.IGNORED
        rt.limiter.count("bfl_webhooks_recovered")
        log.warning("uncertain job recovered by its webhook job=%s", job.job_id)
        recovered = rt.store.get(job.job_id)
        if recovered is None:
            return Answer.IGNORED
        _settle(rt, recovered, result, recovered=True)
        return Answer.RECOVERED
    if job.state is State.ADMITTED and job.submitting_at is not None:
        return Answer.RETRY  # the POST's answer is on its way: moving now would race it
    return Answer.IGNORED


def _settle(rt: Runtime, job: Job, result: Result, *, recovered: bool) -> Answer:
    """A terminal status moves the job on; Pending (a progress call) and "not found" do not."""
    if result.status in (Status.PENDING, Status.TASK_NOT_FOUND):
        return Answer.IGNORED  # the safety-net poll asks BFL itself
    submitted_at = job.times.get(State.SUBMITTED.value)
    seen = None
    if result.status is Status.READY and submitted_at is not None and not recovered:
        elapsed_s = max(0.0, rt.clock() - submitted_at)
        seen = (elapsed_s, elapsed_s)  # a webhook says when, to within its delivery
    return Answer.SETTLED if on_end(rt, job, result, seen=seen) else Answer.IGNORED
