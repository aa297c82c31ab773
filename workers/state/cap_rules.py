"""The cap's rules without Redis: pause kinds and texts, when a pause is in force, the AIMD cap.

``lua/lib.lua`` applies the same rules inside Redis; the limiter and the command line's fast path
(which must not load redis-py) both use these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class PauseKind(StrEnum):
    """Why admission for a key is paused; stored as ``pause_kind`` in ``fluxq:cap:{k}``."""

    OUT_OF_CREDITS = "out_of_credits"
    """402: resumes by itself once ``GET /v1/credits`` shows credit, or on ``fluxq resume``."""
    NOT_AUTHORISED = "not_authorised"
    """401/403: the key was refused; a person must fix it and run ``fluxq resume``."""
    RETRY_AFTER = "retry_after"
    """A 429 carried Retry-After: paused until then, then admission goes on by itself."""


PAUSE_TEXT = {
    PauseKind.OUT_OF_CREDITS: "out of credits (402)",
    PauseKind.NOT_AUTHORISED: "the API key was refused (401/403)",
    PauseKind.RETRY_AFTER: "rate limited (Retry-After)",
}


@dataclass(frozen=True)
class Pause:
    """A pause in force: its kind, what BFL said (redacted), until when (None: until resumed)."""

    kind: PauseKind
    detail: str
    until_s: float | None

    def __str__(self) -> str:
        text = PAUSE_TEXT[self.kind]
        return f"{text}: {self.detail}" if self.detail else text


def aimd_effective_cap(
    key_cap: int, reduced_to: int | None, reduced_at: float, now_s: float, interval_s: float
) -> int:
    """The key cap, or after a 429 the reduced cap plus one per interval since (``lib.lua`` too)."""
    if reduced_to is None:
        return key_cap
    elapsed_s = max(0.0, now_s - reduced_at)
    return min(key_cap, reduced_to + math.floor(elapsed_s / interval_s))


def pause_in_force(
    paused_until: str | None, kind: str | None, detail: str | None, now_s: float
) -> Pause | None:
    """The rule of ``lib.lua``: paused until a time still ahead, or with a kind and no time."""
    if kind is None:
        return None
    until = None if paused_until is None else float(paused_until)
    if until is not None and until <= now_s:
        return None
    return Pause(PauseKind(kind), detail or "", until)
