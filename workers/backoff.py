"""Pure backoff: how long to wait before a retry (when to poll next is ``workers.poll_schedule``).

No clock and no sleeping here: callers pass elapsed times and a random source, tests use tables.
"""

from __future__ import annotations

import random


def backoff_s(
    attempt: int,
    *,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with jitter for retry ``attempt`` (1-based), never above ``cap_s``."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    source = rng or random
    return source.uniform(ceiling / 2, ceiling)
