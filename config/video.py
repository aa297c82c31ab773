"""FLUX 3 video's facts in one place: the MP4 check, and the result shape of a draft batch.

BFL documents ``result.sample`` (one MP4 URL); what a draft batch answers is UNCONFIRMED, so the
shape fluxq reads (and the simulator writes) is named here and nowhere else.
"""

from __future__ import annotations

import math
from typing import Any

MP4_MEDIA = "video/mp4"
"""The media type of an MP4 result (``media`` in ``endpoints.toml``)."""

MP4_HEAD_BYTES = 8
"""How much of a file the MP4 check reads: a box's 4-byte size, then its 4-byte type."""

MP4_FTYP = b"ftyp"
"""The type of an MP4's first box (ISO/IEC 14496-12: ``ftyp`` comes first), at offset 4."""

VIDEO_DOWNLOAD_MAX_BYTES = 512 * 1024 * 1024
"""FLUXQ_VIDEO_DOWNLOAD_MAX_BYTES's default: a 20 s FHD clip with audio is some tens of MB (BFL
takes 50 MB as an input video), so 512 MiB is ten times the size of any clip we expect."""

VIDEO_POLL_DEADLINE_FACTOR = 4.0
"""A video job's deadline is FLUXQ_POLL_DEADLINE_S times this (900 s: one hour): videos take
minutes (``Settings.poll_deadline_s_for``). Its price: a video task BFL never finishes holds one of
the 5 video slots for up to an hour, instead of 15 minutes. It bounds a video slot's doubtful
hold (tasks/uncertain.py); tasks/poll.py's overdue check does not read it yet."""

# --- The draft result shape: UNCONFIRMED (BFL's reference documents only result.sample) ---------

RESULT_SAMPLES_FIELD = "samples"
"""UNCONFIRMED. ``result.samples``: every MP4 URL of a draft batch, in order; the first is also
``result.sample``. Without it a result is its one ``sample``."""

RESULT_DRAFT_CACHES_FIELD = "draft_caches"
"""UNCONFIRMED. ``result.draft_caches``: one draft cache URL per sample, parallel to
``samples``; a later ``draft_enhance`` job sends one as its ``draft_cache``."""

RESULT_DRAFT_CACHE_FIELD = "draft_cache"
"""UNCONFIRMED. ``result.draft_cache``: the first sample's draft cache (a batch of one has no
list)."""

DRAFT_CACHE_URL_LIFETIME_S = 7200.0
"""BFL: "MP4 and draft-cache URLs expire after about 2 hours"; a sidecar says until when."""


def mp4_problem(head: bytes) -> str | None:
    """Why a file starting with ``head`` is not an MP4 (its first box is no ``ftyp``), or None."""
    if head[4:MP4_HEAD_BYTES] == MP4_FTYP:
        return None
    return (
        f"not an MP4: no 'ftyp' box at offset 4 (the first {len(head[:MP4_HEAD_BYTES])} bytes "
        f"are {head[:MP4_HEAD_BYTES].hex() or 'none'})"
    )


def result_samples(result: dict[str, Any]) -> tuple[str, ...]:
    """Every sample URL of a ``result`` object: ``samples`` when it is a list of strings, else
    its one ``sample``, else none."""
    listed = result.get(RESULT_SAMPLES_FIELD)
    if isinstance(listed, list) and listed and all(isinstance(url, str) for url in listed):
        return tuple(listed)
    sample = result.get("sample")
    return (sample,) if isinstance(sample, str) else ()


def result_draft_caches(result: dict[str, Any]) -> tuple[str, ...]:
    """The draft cache URLs of a ``result`` object (``draft_caches``, else ``draft_cache``)."""
    listed = result.get(RESULT_DRAFT_CACHES_FIELD)
    if isinstance(listed, list) and all(isinstance(url, str) for url in listed):
        return tuple(listed)
    one = result.get(RESULT_DRAFT_CACHE_FIELD)
    return (one,) if isinstance(one, str) else ()


def base64_chars(size_bytes: int) -> int:
    """The length of ``size_bytes`` bytes in base64, plus room for a ``data:...;base64,`` head."""
    return 4 * math.ceil(size_bytes / 3) + 64
