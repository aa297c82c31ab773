"""What a Ready job's save fetches: its sample URLs (a draft batch's several), their file names,
the bound on each download, and the check that a video is one.

A draft's extra samples and its draft caches come from one more ``get_result`` at save time, so
the poll and webhook paths, which record one sample URL per job, stay as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fluxq.config.endpoint_spec import IMAGE
from fluxq.config.errors import FluxqError, JobFailed
from fluxq.config.settings import Settings
from fluxq.config.video import DRAFT_CACHE_URL_LIFETIME_S, MP4_HEAD_BYTES, MP4_MEDIA, mp4_problem
from fluxq.workers.bfl.responses import Status
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import Job

log = logging.getLogger("fluxq.save")


@dataclass(frozen=True)
class Samples:
    """The URLs a save downloads (the first is the job's own sample) and a draft's caches."""

    urls: tuple[str, ...]
    draft_caches: tuple[str, ...] = ()
    fetched_at_s: float | None = None
    """When a draft's result was fetched: its caches are valid about 2 hours from then."""
    note: str | None = None
    """Why a draft's extra samples are missing, when they are (its result could not be read)."""

    def sidecar(self) -> dict[str, object]:
        """A draft's fields of the sidecar: its caches (the first is ``draft_cache``, what a
        ``draft_enhance`` job sends) and until when they are valid."""
        fields: dict[str, object] = {}
        if self.draft_caches:
            fields["draft_cache"] = self.draft_caches[0]
            fields["draft_caches"] = list(self.draft_caches)
        if self.fetched_at_s is not None and self.draft_caches:
            fields["draft_cache_valid_until"] = self.fetched_at_s + DRAFT_CACHE_URL_LIFETIME_S
        if self.note is not None:
            fields["samples_note"] = self.note
        return fields


def is_draft(job: Job) -> bool:
    """Whether the job asked for a draft (``draft: true``): its result may hold several samples
    and draft caches."""
    return job.request.get("draft") is True


def samples_of(rt: Runtime, job: Job) -> Samples | FluxqError:
    """The job's samples: its one sample URL, or, for a draft, what BFL's result lists now (one
    ``get_result``; its URLs freshly signed). A failed GET is returned for the save to retry; a
    result that is gone or unreadable leaves the one sample already known, said in ``note``."""
    assert job.sample_url is not None
    if not is_draft(job) or not job.polling_url:
        return Samples((job.sample_url,))
    try:
        fresh = rt.bfl.get_result(job.polling_url)
    except JobFailed as exc:
        return _only_first(job, f"the draft's result could not be read: {exc}")
    except FluxqError as exc:
        return exc
    if fresh.status is not Status.READY or not fresh.samples:
        return _only_first(job, f"the draft's result now reads {fresh.raw_status}")
    return Samples(fresh.samples, fresh.draft_caches, rt.clock())


def _only_first(job: Job, note: str) -> Samples:
    log.warning("saving the first sample only job=%s: %s", job.job_id, note)
    assert job.sample_url is not None
    return Samples((job.sample_url,), note=note)


def sample_paths(first: Path, count: int) -> list[Path]:
    """``<name>.<ext>``, then ``<name>-2.<ext>``, ``<name>-3.<ext>``...: one per sample."""
    return [first] + [
        first.with_name(f"{first.stem}-{n}{first.suffix}") for n in range(2, count + 1)
    ]


def download_bound(settings: Settings, media: str) -> tuple[int, str]:
    """The size bound on a result of ``media`` and the setting that sets it."""
    name = "FLUXQ_DOWNLOAD_MAX_BYTES" if media == IMAGE else "FLUXQ_VIDEO_DOWNLOAD_MAX_BYTES"
    return settings.download_max_bytes_for(media), name


def media_of(settings: Settings, job: Job) -> str:
    """The job's result media (an endpoint this process does not know: an image)."""
    spec = settings.catalog.get(job.endpoint)
    return IMAGE if spec is None else spec.media


def media_problem(path: Path, media: str) -> str | None:
    """Why the downloaded file at ``path`` is not a ``media`` file, or None. Only an MP4 is
    checked (its ``ftyp`` box at offset 4): an image's decoder is not worth a save's time."""
    if media != MP4_MEDIA:
        return None
    with path.open("rb") as file:
        return mp4_problem(file.read(MP4_HEAD_BYTES))
