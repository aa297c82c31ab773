"""FLUX 3 video in the simulator: a small valid MP4 per sample, and signed draft cache URLs.

The MP4 is built in pure Python (no ffmpeg): an ``ftyp`` box, a ``moov`` holding an ``mvhd``, and
an ``mdat`` of bytes chosen by hashing prompt, seed and sample, so every sample's file differs.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
from urllib.parse import parse_qs, urlencode, urlsplit

MP4_TIMESCALE = 1000
"""Units per second of the ``mvhd`` duration."""

MDAT_BYTES = 2048
"""Bytes of the ``mdat`` payload: enough to be a file worth checksumming, small to serve."""

DRAFT_PATH_RE = re.compile(r"/draft/(?P<task_id>[0-9a-fA-F-]{1,64})_(?P<index>[1-9][0-9]?)")
"""The path of a draft cache URL: ``/draft/<task id>_<sample>``."""


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def render_mp4(prompt: str, seed: int, index: int, duration_s: float) -> bytes:
    """An MP4 of ``duration_s`` seconds for sample ``index``: equal inputs give equal bytes."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2mp41")
    mvhd = _box(
        b"mvhd",
        struct.pack(
            ">B3xIIII",
            0,  # version 0, flags 0
            0,  # creation time
            0,  # modification time
            MP4_TIMESCALE,
            round(duration_s * MP4_TIMESCALE),
        )
        + struct.pack(">IH10x", 0x00010000, 0x0100)  # rate 1.0, volume 1.0, reserved
        + struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)  # unity matrix
        + bytes(24)  # pre_defined
        + struct.pack(">I", 1),  # next track id
    )
    seed_bytes = hashlib.sha256(f"{seed}\x00{index}\x00{prompt}".encode()).digest()
    payload = (seed_bytes * math.ceil(MDAT_BYTES / len(seed_bytes)))[:MDAT_BYTES]
    return ftyp + _box(b"moov", mvhd) + _box(b"mdat", payload)


def _draft_signature(secret: bytes, task_id: str, index: int, expires_at: int) -> str:
    message = f"draft:{task_id}_{index}:{expires_at}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_draft_cache(
    secret: bytes, base_url: str, task_id: str, index: int, expires_at: float
) -> str:
    """A signed draft cache URL for sample ``index`` of a draft task, valid until
    ``expires_at`` (whole epoch seconds, rounded up)."""
    exp = math.ceil(expires_at)
    query = urlencode({"exp": exp, "sig": _draft_signature(secret, task_id, index, exp)})
    return f"{base_url.rstrip('/')}/draft/{task_id}_{index}?{query}"


def read_draft_cache(secret: bytes, url: str, now: float) -> tuple[str, int] | str:
    """The (task id, sample) a draft cache URL names, or why it is refused (not one of ours,
    a bad signature, expired). Base64 caches are not simulated: only the URL form."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "not a draft cache URL"
    match = DRAFT_PATH_RE.fullmatch(parts.path)
    query = parse_qs(parts.query)
    exp = query.get("exp", [""])[0]
    sig = query.get("sig", [""])[0]
    if match is None or not exp.isdigit() or not sig:
        return "not a draft cache URL"
    task_id, index = match["task_id"], int(match["index"])
    expected = _draft_signature(secret, task_id, index, int(exp))
    if not hmac.compare_digest(expected, sig):
        return "draft cache signature does not match"
    if now >= int(exp):
        return "draft cache has expired"
    return task_id, index
