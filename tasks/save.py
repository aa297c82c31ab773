"""fluxq.save, the result callback: download the signed URL within its 10 minutes, write the image
and its metadata atomically, mark the job done, append the manifest line, then run user callbacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Task

from config.catalog import output_format, validate_request
from config.errors import DownloadFailed, FluxqError, JobFailed, RetryLater
from tasks.callbacks import notify_terminal
from workers import keys
from workers.celery_app import app
from workers.files import (
    append_manifest,
    commit_file,
    safe_name,
    temp_path_for,
    url_suffix,
    write_json_atomic,
)
from workers.results import Downloaded, Status
from workers.runtime import Runtime, flower_options, get_runtime
from workers.store import Job, State
from workers.timing import backoff_s

log = logging.getLogger("fluxq.save")

SAVE_BACKOFF_CAP_S = 20.0  # the URL lives 10 minutes: retries must stay well inside that
REFETCH_FLAG = "refetched"
MANIFEST_FLAG = "manifest_appended"


def watch_save(rt: Runtime, job_id: str, *, now_s: float) -> None:
    """Ask the sweep to re-send this job's save unless it ends within a lease's time."""
    rt.redis.zadd(keys.saves(rt.label), {job_id: now_s + rt.settings.lease_ttl_s})


def resend_lost_saves(rt: Runtime, now_s: float) -> int:
    """Re-send the save of ready jobs whose save did not end in time (its worker died)."""
    resent = 0
    for job_id in rt.redis.zrangebyscore(keys.saves(rt.label), "-inf", now_s, start=0, num=1000):
        job = rt.store.get(job_id)
        if job is None or job.state is not State.READY:
            rt.redis.zrem(keys.saves(rt.label), job_id)
            continue
        watch_save(rt, job_id, now_s=now_s)
        rt.dispatch.save(job)
        resent += 1
    return resent


def final_path(rt: Runtime, job: Job) -> Path:
    """``<output_dir>/<batch>/<name>.<ext>``."""
    # The URL's suffix tells the real format; only without one is the request consulted.
    suffix = url_suffix(job.sample_url) or output_format(
        validate_request(job.endpoint, job.request)
    )
    return rt.settings.output_dir / safe_name(job.batch) / f"{safe_name(job.name)}.{suffix}"


def metadata(job: Job, image: Path, got: Downloaded, done_at_s: float) -> dict[str, Any]:
    """The sidecar: what was asked, what BFL did, what it cost, when each step happened."""
    times = dict(job.times)
    times["done"] = done_at_s
    return {
        "job_id": job.job_id,
        "batch": job.batch,
        "name": job.name,
        "file": image.name,
        "endpoint": job.endpoint,
        "request": job.request,
        "seed": job.seed,
        "bfl_id": job.bfl_id,
        "cost_credits": job.cost,
        "output_mp": float(job.extra["output_mp"]) if "output_mp" in job.extra else None,
        "sha256": got.sha256,
        "size_bytes": got.size_bytes,
        "content_type": got.content_type,
        "times": times,
        "timings_s": {
            "queued_to_submitted": _span(times, "queued", "submitted"),
            "submitted_to_ready": _span(times, "submitted", "ready"),
            "ready_to_done": _span(times, "ready", "done"),
            "total": _span(times, "queued", "done"),
        },
    }


def _span(times: dict[str, float], start: str, end: str) -> float | None:
    if start in times and end in times:
        return round(times[end] - times[start], 3)
    return None


def _fail(rt: Runtime, job: Job, reason: str) -> None:
    rt.redis.zrem(keys.saves(rt.label), job.job_id)
    if rt.store.transition(
        job.job_id, (State.READY,), State.FAILED, now_s=rt.clock(), reason=reason
    ):
        log.warning("save failed job=%s batch=%s reason=%s", job.job_id, job.batch, reason)
        notify_terminal(rt, job)


def _refetch(rt: Runtime, job: Job, exc: DownloadFailed) -> bool:
    """Ask BFL once for a fresh sample URL (the old one expired); True when there is one."""
    if job.extra.get(REFETCH_FLAG) or not job.polling_url:
        return False
    rt.store.update(job.job_id, {REFETCH_FLAG: 1})
    try:
        fresh = rt.client.get_result(job.polling_url)
    except FluxqError as err:
        log.info("re-fetch of the result failed job=%s error=%s", job.job_id, err)
        return False
    if fresh.status is not Status.READY or not fresh.sample_url:
        return False
    log.info("download failed (%s); re-fetched a fresh URL job=%s", exc, job.job_id)
    rt.store.update(job.job_id, {"sample_url": fresh.sample_url})
    return True


def save_job(rt: Runtime, job_id: str) -> float | None:
    """Save one Ready job. Returns a countdown when the task should retry, else None."""
    job = rt.store.get(job_id)
    if job is None or job.state is not State.READY:
        return None
    if not job.sample_url:
        _fail(rt, job, "BFL said Ready without a sample URL")
        return None
    image = final_path(rt, job)
    temp = temp_path_for(image)
    attempt = rt.store.incr(job_id, "download_attempts")
    try:
        got = rt.client.download(job.sample_url, temp)
    except DownloadFailed as exc:
        if _refetch(rt, job, exc):
            return 0.0
        _fail(rt, job, f"download failed: {exc}")
        return None
    except RetryLater as exc:
        if attempt < rt.settings.download_max_attempts:
            return backoff_s(
                attempt, base_s=rt.settings.retry_backoff_base_s, cap_s=SAVE_BACKOFF_CAP_S
            )
        _fail(rt, job, f"download failed {attempt} times: {exc}")
        return None
    except JobFailed as exc:
        _fail(rt, job, f"download refused: {exc}")
        return None
    commit_file(temp, image)
    done_at = rt.clock()
    meta = metadata(job, image, got, done_at)
    write_json_atomic(image.with_suffix(".json"), meta)
    _record_in_manifest(rt, job, image, meta)
    fields: dict[str, str | int | float] = {"path": str(image), "sha256": got.sha256}
    moved = rt.store.transition(job_id, (State.READY,), State.DONE, now_s=done_at, fields=fields)
    rt.redis.zrem(keys.saves(rt.label), job_id)
    if moved:
        notify_terminal(rt, job)
    return None


def _record_in_manifest(rt: Runtime, job: Job, image: Path, meta: dict[str, Any]) -> None:
    """Append the job's manifest line before it is marked done, once.

    A crash between the append and the marker repeats the line on redelivery (readers dedupe by
    job_id); the other order could lose it, which a crash test showed.
    """
    if job.extra.get(MANIFEST_FLAG):
        return
    append_manifest(image.parent / "manifest.jsonl", _manifest_entry(job, image, meta))
    rt.store.update(job.job_id, {MANIFEST_FLAG: 1})


def _manifest_entry(job: Job, image: Path, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "name": job.name,
        "file": image.name,
        "sha256": meta["sha256"],
        "endpoint": job.endpoint,
        "seed": job.seed,
        "cost_credits": job.cost,
        "state": State.DONE.value,
    }


@app.task(name="fluxq.save", bind=True, max_retries=None, acks_late=True)
def save(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: download and save the image; retry briefly on transport errors."""
    countdown = save_job(get_runtime(), job_id)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
