"""Signed delivery URLs like BFL's ``delivery-*.bfl.ai`` ones: HMAC-SHA256 over path and expiry.

``/sample/<task id>.<format>?exp=<epoch s>&sig=<hex>``: the suffix tells the format, as at BFL.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlencode

SAMPLE_PATH_RE = re.compile(
    r"(?P<task_id>[0-9a-fA-F-]{1,64})(?:_(?P<index>[2-9]|[1-9][0-9]))?\.(?P<fmt>jpeg|png|webp|mp4)"
)
"""The last path segment of a sample URL: ``<task id>.<format>``, or ``<task id>_<n>.<format>``
for sample n (from 2) of a video draft batch."""


class Verdict(Enum):
    """What checking a sample URL's signature and expiry concluded."""

    VALID = "valid"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"


@dataclass(frozen=True)
class SampleRef:
    """A parsed sample URL: which task and format, until when, with what signature."""

    task_id: str
    fmt: str
    expires_at: int
    signature: str
    index: int = 1
    """Which sample of the task (a draft batch has several)."""


def _name(task_id: str, index: int) -> str:
    return task_id if index == 1 else f"{task_id}_{index}"


def _signature(secret: bytes, name: str, fmt: str, expires_at: int) -> str:
    message = f"{name}.{fmt}:{expires_at}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_sample_url(
    secret: bytes, base_url: str, task_id: str, fmt: str, expires_at: float, *, index: int = 1
) -> tuple[str, int]:
    """The signed URL of sample ``index`` and its expiry in whole epoch seconds (rounded up,
    never early)."""
    exp = math.ceil(expires_at)
    name = _name(task_id, index)
    query = urlencode({"exp": exp, "sig": _signature(secret, name, fmt, exp)})
    return f"{base_url.rstrip('/')}/sample/{name}.{fmt}?{query}", exp


def parse_sample(name: str, exp: str | None, sig: str | None) -> SampleRef | None:
    """Parse a sample URL's last segment and query; None when malformed."""
    match = SAMPLE_PATH_RE.fullmatch(name)
    if match is None or exp is None or sig is None or not exp.isdigit():
        return None
    index = int(match["index"]) if match["index"] else 1
    return SampleRef(match["task_id"], match["fmt"], int(exp), sig, index)


def check_sample(secret: bytes, ref: SampleRef, now: float) -> Verdict:
    """Signature first (a forged expiry must not read as merely expired), then expiry."""
    expected = _signature(secret, _name(ref.task_id, ref.index), ref.fmt, ref.expires_at)
    if not hmac.compare_digest(expected, ref.signature):
        return Verdict.BAD_SIGNATURE
    if now >= ref.expires_at:
        return Verdict.EXPIRED
    return Verdict.VALID
