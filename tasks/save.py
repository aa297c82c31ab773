"""fluxq.save, the result callback: download the signed URL while it lives (an image's 10 minutes,
a video's 2 hours), write the file (a draft batch's several) and its metadata atomically, mark the
job done, append the manifest line, then run user callbacks.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Task, shared_task

from fluxq.config.catalog import Catalog, result_suffix
from fluxq.config.celery import SAVE
from fluxq.config.endpoint_spec import IMAGE, IMAGE_URL_LIFETIME_S
from fluxq.config.errors import DownloadFailed, FluxqError, JobFailed, ReadFailed, RetryLater
from fluxq.tasks import lifecycle
from fluxq.tasks.samples import (
    Samples,
    download_bound,
    media_of,
    media_problem,
    sample_paths,
    samples_of,
)
from fluxq.workers.backoff import backoff_s
from fluxq.workers.bfl.responses import Downloaded, Status
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.files import (
    append_manifest,
    commit_file,
    remove_stale_parts,
    safe_name,
    temp_path_for,
    url_suffix,
    write_json_atomic,
)
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime, flower_options
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import Job, JobField, State
from fluxq.workers.storage import ObjectStore, StoreFailed, json_bytes, manifest_line, open_store

log = logging.getLogger("fluxq.save")

SAVE_BACKOFF_CAP_S = 20.0  # the URL lives 10 minutes: retries must stay well inside that

CLOCK_SKEW_S = 10.0
"""How far apart the clocks of the machine that made a job ready and the one saving it may be."""


def final_path(rt: Runtime, job: Job) -> Path:
    """``<output_dir>/<batch>/<name>.<ext>``, ``name`` being the file stem stored at enqueue.

    Enqueue stores ``safe_name(name)`` (else the job id) and refuses a second job of the batch
    with that stem, so no two jobs share a file. ``safe_name`` is idempotent: applied again here
    it keeps a stored stem as it is and still confines a record written before that rule.
    """
    return batch_dir(rt, job.batch) / file_name(job, rt.settings.catalog)


def file_name(job: Job, catalog: Catalog) -> str:
    """``<name>.<ext>``: the stored stem and the result's real format. The endpoint is no part
    of it: a nested one (``flux-tools/erase-v1``) adds no directory."""
    # The URL's suffix tells the real format; only without one is the request consulted.
    suffix = url_suffix(job.sample_url) or result_suffix(job.endpoint, job.request, catalog=catalog)
    stem = safe_name(job.name or job.job_id)
    return f"{stem}.{suffix}"


def batch_dir(rt: Runtime, batch: str) -> Path:
    """Where a batch's files go: the directory ``fluxq batch submit --out`` named (an absolute
    path on the workers' machines), else ``<output_dir>/<batch>``."""
    out = rt.redis.hget(keys.batch(batch), "out")
    return Path(out) if out else rt.settings.output_dir / safe_name(batch)


def output_store(rt: Runtime, batch: str) -> ObjectStore | None:
    """The object store the batch's files go to (FLUXQ_OUTPUT_URL), or None for a local
    directory: without FLUXQ_OUTPUT_URL, or for a batch given its own ``--out`` directory."""
    if rt.settings.output_url is None or rt.redis.hget(keys.batch(batch), "out"):
        return None
    return open_store(rt.settings)


def staging_path(rt: Runtime, job: Job) -> Path:
    """Where an image bound for an object store is downloaded first (a local disk, so the
    upload sends a complete, fsynced file)."""
    name = file_name(job, rt.settings.catalog)
    return Path(tempfile.gettempdir()) / "fluxq-staging" / safe_name(job.batch) / name


def metadata(
    job: Job,
    image: Path,
    got: Downloaded,
    done_at_s: float,
    *,
    files: list[tuple[str, Downloaded]] | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, Any]:
    """The sidecar: what was asked, what BFL did, what it cost, when each step happened. A
    video's lists its ``files`` (a draft batch's several, each with its sha256 and size) and
    ``extra`` (a draft's caches: ``Samples.sidecar``)."""
    times = dict(job.times)
    times["done"] = done_at_s
    listed: dict[str, Any] = {}
    if files is not None:
        listed["files"] = [
            {"file": name, "sha256": each.sha256, "size_bytes": each.size_bytes}
            for name, each in files
        ]
    return {
        **listed,
        **(extra or {}),
        "job_id": job.job_id,
        "batch": job.batch,
        "name": job.name,
        "file": image.name,
        "endpoint": job.endpoint,
        "request": job.request,
        "seed": job.seed,
        "bfl_id": job.bfl_id,
        "cost_credits": job.cost,
        "output_mp": job.output_mp,
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


def _refetch(rt: Runtime, job: Job) -> bool:
    """Ask BFL for the result again; True when it signed a URL other than the refused one (the
    refused one expired), which the next attempt uses at once."""
    if not job.polling_url:
        return False
    rt.store.incr(job.job_id, JobField.REFETCHED)
    try:
        fresh = rt.bfl.get_result(job.polling_url)
    except FluxqError as err:
        log.info("re-fetch of the result failed job=%s error=%s", job.job_id, err)
        return False
    if (
        fresh.status is not Status.READY
        or not fresh.sample_url
        or fresh.sample_url == job.sample_url
    ):
        return False
    log.info("download refused; BFL signed a fresh URL job=%s", job.job_id)
    fields: dict[str, str | int | float] = {
        JobField.SAMPLE_URL: fresh.sample_url,
        JobField.SAMPLE_URL_AT: rt.clock(),
    }
    rt.store.update(job.job_id, fields)
    return True


SAMPLE_URL_VALID_S = IMAGE_URL_LIFETIME_S
"""BFL's signed image URLs are valid for 10 minutes (an endpoint's ``url_lifetime_s`` says its
own; this for one the catalog no longer has). Until then a refused or broken download (403,
404, 5xx, a dropped connection) is the delivery host's bad minute, not an expired URL: the image
is paid for, so the save tries again (backoff up to 20 s) rather than fail the job. Its price: a
save task that waits up to the URL's lifetime; the job's slot was freed at Ready."""


def url_valid_s(rt: Runtime, job: Job) -> float:
    """How long the job's result URL lives once signed: its endpoint's ``url_lifetime_s``."""
    spec = rt.settings.catalog.get(job.endpoint)
    return SAMPLE_URL_VALID_S if spec is None else spec.url_lifetime_s


def save_job(rt: Runtime, job_id: str) -> float | None:
    """Save one Ready job. Returns a countdown when the task should retry, else None.

    While a retry waits, the save watchdog is pushed past it, so the sweep never sends a second
    save of the same job meanwhile."""
    countdown_s = _save(rt, job_id)
    if countdown_s is not None:
        job = rt.store.get(job_id)
        if job is not None and job.state is State.READY:
            until_s = rt.clock() + countdown_s + rt.settings.lease_ttl_s
            rt.store.watch_save(job_id, job.key_label, until_s=until_s)
    return countdown_s


def _save(rt: Runtime, job_id: str) -> float | None:
    job = rt.store.get(job_id)
    if job is None or job.state is not State.READY:
        return None
    if not job.sample_url:
        lifecycle.fail(rt, job, "BFL said Ready without a sample URL")
        return None
    try:
        store = output_store(rt, job.batch)
    except StoreFailed as exc:  # the backend refused FLUXQ_OUTPUT_OPTIONS
        return _store_failed(rt, job, rt.store.incr(job_id, JobField.DOWNLOAD_ATTEMPTS), exc)
    image = final_path(rt, job) if store is None else staging_path(rt, job)
    attempt = rt.store.incr(job_id, JobField.DOWNLOAD_ATTEMPTS)
    samples = samples_of(rt, job)
    if isinstance(samples, FluxqError):  # a draft's result could not be asked for: retry
        return _after_failed_download(rt, job, samples, attempt)
    paths = sample_paths(image, len(samples.urls))
    if attempt > 1:
        # An earlier attempt may have died (SIGKILL mid-download) and left its .part file. Only
        # then is the batch directory scanned: a first save, the hot path, never lists it.
        for path in paths:
            remove_stale_parts(path, now_s=time.time(), older_than_s=rt.settings.lease_ttl_s / 2)
    media = media_of(rt.settings, job)
    gots = _download_all(rt, job, samples.urls, paths, attempt, media)
    if not isinstance(gots, list):
        return gots
    files = [(path.name, got) for path, got in zip(paths, gots, strict=True)]
    listed = files if media != IMAGE else None
    if store is not None:
        return _save_to_store(rt, job, store, files, listed, samples, attempt)
    _save_locally(rt, job, paths, gots, listed, samples, attempt)
    return None


def _resent_since(rt: Runtime, job: Job, attempt: int) -> bool:
    """Whether another save of the job began after this one (the sweep resent it while this
    one ran slow). Only possible once the save watch set at Ready (``lease_ttl_s`` on) has
    passed: before then the hot path asks Redis nothing; after, one HGET."""
    ready_at = job.times.get(State.READY.value, 0.0)
    if rt.clock() < ready_at + rt.settings.lease_ttl_s - CLOCK_SKEW_S:
        return False
    return rt.store.count(job.job_id, JobField.DOWNLOAD_ATTEMPTS) > attempt


def _save_locally(
    rt: Runtime,
    job: Job,
    paths: list[Path],
    gots: list[Downloaded],
    listed: list[tuple[str, Downloaded]] | None,
    samples: Samples,
    attempt: int,
) -> None:
    """Rename each downloaded file into place, write the sidecar and the manifest line, and mark
    the job done (its path and sha256: the first file's). ``attempt``: this save's count of
    download attempts."""
    image = paths[0]
    for path, got in zip(paths, gots, strict=True):
        commit_file(got.path, path)
    meta = metadata(job, image, gots[0], rt.clock(), files=listed, extra=samples.sidecar())
    write_json_atomic(image.with_suffix(".json"), meta)
    if attempt > 1 or _resent_since(rt, job, attempt):
        # The files and the sidecar are in place: any temporary file left by another attempt,
        # an earlier one or one begun since this one (a save resent while this one ran slow:
        # killed then, its file would outlive a job that no save visits again), however recent
        # (a sidecar's is written in milliseconds), is dead now. A duplicate attempt still
        # running loses its rename and finds the job done.
        for path in paths:
            remove_stale_parts(path, now_s=time.time(), older_than_s=0.0)
    _record_in_manifest(rt, job, image, meta)
    fields: dict[str, str | int | float] = {
        JobField.PATH: str(image),
        JobField.SHA256: gots[0].sha256,
    }
    lifecycle.end(rt, job, State.DONE, fields=fields)


def _download_all(
    rt: Runtime, job: Job, urls: tuple[str, ...], paths: list[Path], attempt: int, media: str
) -> list[Downloaded] | float | None:
    """Every sample downloaded beside its final path, else what ``save_job`` returns (the
    downloads already done are removed: the next attempt fetches them all again)."""
    gots: list[Downloaded] = []
    for url, path in zip(urls, paths, strict=True):
        got = _download(rt, job, url, temp_path_for(path), attempt, media)
        if not isinstance(got, Downloaded):
            for done in gots:
                done.path.unlink(missing_ok=True)
            return got
        gots.append(got)
    return gots


def _download(
    rt: Runtime, job: Job, url: str, temp: Path, attempt: int, media: str
) -> Downloaded | float | None:
    """The downloaded file, else what ``save_job`` returns: a countdown to retry, or None once
    the job has failed. A body that is not its media (an MP4 without its ``ftyp`` box) is
    retried as a broken download is."""
    max_bytes, limit_name = download_bound(rt.settings, media)
    try:
        got = rt.bfl.download(url, temp, max_bytes=max_bytes, limit_name=limit_name)
    except DownloadFailed as exc:
        if exc.status_code == 200:  # too large, or empty: the same URL would fail the same way
            lifecycle.fail(rt, job, f"download failed: {exc}")
            return None
        if exc.expired and url == job.sample_url and _refetch(rt, job):
            return 0.0
        return _after_failed_download(rt, job, exc, attempt)
    except RetryLater as exc:
        return _after_failed_download(rt, job, exc, attempt)
    except JobFailed as exc:
        lifecycle.fail(rt, job, f"download refused: {exc}")
        return None
    problem = media_problem(got.path, media)
    if problem is not None:
        got.path.unlink(missing_ok=True)
        log.warning("downloaded body refused job=%s attempt=%d: %s", job.job_id, attempt, problem)
        return _after_failed_download(rt, job, ReadFailed(f"download: {problem}"), attempt)
    return got


def _after_failed_download(rt: Runtime, job: Job, exc: FluxqError, attempt: int) -> float | None:
    """Try again while the URL is valid (``url_valid_s``) or attempts are left
    (FLUXQ_DOWNLOAD_MAX_ATTEMPTS); past both, fail with what the host said."""
    url_at = job.sample_url_at or job.times.get(State.READY.value) or rt.clock()
    age_s = rt.clock() - url_at
    if age_s < url_valid_s(rt, job) or attempt < rt.settings.download_max_attempts:
        return _retry_in(rt, attempt)
    lifecycle.fail(rt, job, f"download failed {attempt} times, its URL {age_s:.0f} s old: {exc}")
    return None


def _retry_in(rt: Runtime, attempt: int) -> float:
    return backoff_s(attempt, base_s=rt.settings.retry_backoff_base_s, cap_s=SAVE_BACKOFF_CAP_S)


def _save_to_store(
    rt: Runtime,
    job: Job,
    store: ObjectStore,
    files: list[tuple[str, Downloaded]],
    listed: list[tuple[str, Downloaded]] | None,
    samples: Samples,
    attempt: int,
) -> float | None:
    """Upload the downloaded files (each whole, then read back and checked), the sidecar and the
    manifest line object, then mark the job done; a store failure retries the whole save."""
    name, got = files[0]
    folder = safe_name(job.batch)
    url = store.url_of(folder, name)
    try:
        for each_name, each in files:
            store.put_file(
                each.path, store.url_of(folder, each_name), sha256=each.sha256, size=each.size_bytes
            )
        meta = metadata(job, Path(name), got, rt.clock(), files=listed, extra=samples.sidecar())
        store.put_bytes(json_bytes(meta), store.url_of(folder, Path(name).stem + ".json"))
        if not job.manifest_appended:
            entry = _manifest_entry(job, Path(name), meta)
            store.put_bytes(manifest_line(entry), store.manifest_url(folder, job.job_id))
            rt.store.update(job.job_id, {JobField.MANIFEST_APPENDED: 1})
    except StoreFailed as exc:
        return _store_failed(rt, job, attempt, exc)
    finally:
        for _, each in files:
            each.path.unlink(missing_ok=True)
    fields: dict[str, str | int | float] = {JobField.PATH: url, JobField.SHA256: got.sha256}
    lifecycle.end(rt, job, State.DONE, fields=fields)
    return None


def _store_failed(rt: Runtime, job: Job, attempt: int, exc: StoreFailed) -> float | None:
    """Retry the whole save (a fresh download, a fresh upload) with backoff, up to
    FLUXQ_DOWNLOAD_MAX_ATTEMPTS; then fail the job with the store's (redacted) reason."""
    log.warning("saving to the store failed job=%s attempt=%d: %s", job.job_id, attempt, exc)
    if attempt < rt.settings.download_max_attempts:
        return _retry_in(rt, attempt)
    lifecycle.fail(rt, job, f"could not save to FLUXQ_OUTPUT_URL ({attempt} tries): {exc}")
    return None


def _record_in_manifest(rt: Runtime, job: Job, image: Path, meta: dict[str, Any]) -> None:
    """Append the job's manifest line before it is marked done, once.

    A crash between the append and the marker repeats the line on redelivery (readers dedupe by
    job_id); the other order could lose it, which a crash test showed.
    """
    if job.manifest_appended:
        return
    append_manifest(image.parent / "manifest.jsonl", _manifest_entry(job, image, meta))
    rt.store.update(job.job_id, {JobField.MANIFEST_APPENDED: 1})


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
        **({"files": [f["file"] for f in meta["files"]]} if "files" in meta else {}),
    }


@shared_task(name=SAVE.name, base=RedactedTask, bind=True, max_retries=None, acks_late=True)
def save(self: Task, job_id: str, batch: str = "") -> None:
    """Celery task: download and save the image; retry briefly on transport errors."""
    countdown = save_job(runtime_of(self.app), job_id)
    if countdown is not None:
        raise self.retry(countdown=countdown, **flower_options(self))
