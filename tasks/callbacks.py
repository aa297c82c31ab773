"""The user's callbacks on a terminal job: a Celery signature, and an HMAC-signed HTTP webhook.

(The third channel, a Redis pub/sub event per state change, is published by the store's Lua.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

import httpx
from celery import Task, shared_task

from workers.dispatch import runtime_of
from workers.runtime import Runtime, flower_options
from workers.state.jobs import Job, JobField
from workers.timing import backoff_s

log = logging.getLogger("fluxq.callbacks")

SIGNATURE_HEADER = "X-Fluxq-Signature"
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_BACKOFF_CAP_S = 300.0


def job_payload(job: Job) -> dict[str, Any]:
    """What callbacks receive: the outcome and where the file is; no secrets."""
    return {
        "job_id": job.job_id,
        "batch": job.batch,
        "name": job.name,
        "state": job.state.value,
        "reason": job.reason,
        "endpoint": job.endpoint,
        "path": job.path,
        "sha256": job.sha256,
        "seed": job.seed,
        "bfl_id": job.bfl_id,
        "cost_credits": job.cost,
        "times": job.times,
    }


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>``, the same scheme BFL uses for its webhooks."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def notify_terminal(rt: Runtime, before: Job) -> None:
    """Fire the job's callbacks once it reached done, failed or cancelled.

    ``before`` is the job as the caller last read it: callbacks are fixed at enqueue, so a job
    without any costs no second read (the common case on the hot path).
    """
    if not before.callback_json and not before.webhook_url:
        return
    job_id = before.job_id
    job = rt.store.get(job_id)
    if job is None or not job.state.terminal:
        return
    if job.callback_json:
        try:
            rt.dispatch.callback(job, job_payload(job))
        except Exception:  # a broken user signature must not break the pipeline
            log.exception("callback signature failed job=%s", job_id)
    if job.webhook_url:
        rt.dispatch.webhook(job)


def deliver_webhook(rt: Runtime, job_id: str, *, attempt: int) -> float | None:
    """POST the job's outcome to its webhook URL. Returns a countdown to retry, else None."""
    job = rt.store.get(job_id)
    if job is None or not job.webhook_url:
        return None
    body = json.dumps(job_payload(job), sort_keys=True).encode()
    headers = {"content-type": "application/json", "user-agent": "fluxq-webhook"}
    if rt.settings.webhook_secret is not None:
        headers[SIGNATURE_HEADER] = sign(
            rt.settings.webhook_secret.get_secret_value().encode(), body
        )
    try:
        response = httpx.post(
            job.webhook_url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S
        )
        ok = 200 <= response.status_code < 300
        detail = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}"
    if ok:
        rt.store.update(job_id, {JobField.WEBHOOK_DELIVERED: 1})
        return None
    if attempt >= rt.settings.webhook_max_attempts:
        log.error("webhook gave up job=%s attempts=%d last=%s", job_id, attempt, detail)
        rt.store.update(job_id, {JobField.WEBHOOK_FAILED: detail})
        return None
    return backoff_s(
        attempt, base_s=2 * rt.settings.retry_backoff_base_s, cap_s=WEBHOOK_BACKOFF_CAP_S
    )


@shared_task(name="fluxq.webhook", bind=True, max_retries=None, acks_late=True)
def webhook(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: deliver the job's webhook, retried with backoff."""
    countdown = deliver_webhook(runtime_of(self.app), job_id, attempt=self.request.retries + 1)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
