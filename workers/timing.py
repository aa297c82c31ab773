"""Pure timing rules: when to poll next, how long to back off, how the latency estimate moves.

No clock and no sleeping here: callers pass elapsed times and a random source, tests use tables.
"""

from __future__ import annotations

import random

FIRST_POLL_FRACTION = 0.9
"""The first poll lands at this fraction of the endpoint's median latency: before most finish."""

STEP_GROWTH = 0.1
"""After the median, each second of overrun adds this many seconds to the poll step."""

MEDIAN_STEP_FRACTION = 0.05
"""The median tracker moves this fraction of its value toward each observation (min 0.01 s)."""


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def next_poll_delay_s(
    *, elapsed_s: float, median_s: float, min_delay_s: float, max_delay_s: float
) -> float:
    """Seconds until the next poll of a task submitted ``elapsed_s`` ago.

    Before the expected finish, wait until just before it (one request instead of many); after it,
    poll in short steps that widen slowly, so a job is seen Ready soon after it is.
    """
    first_at_s = median_s * FIRST_POLL_FRACTION
    if elapsed_s < first_at_s:
        return clamp(first_at_s - elapsed_s, min_delay_s, max(max_delay_s, first_at_s))
    overrun_s = elapsed_s - first_at_s
    return clamp(min_delay_s + overrun_s * STEP_GROWTH, min_delay_s, max_delay_s)


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


def update_median_s(current_s: float | None, observed_s: float) -> float:
    """Move a streaming median estimate one step toward an observation (stochastic approximation).

    Unlike a mean, it is not dragged by the long tail of a lognormal latency.
    """
    if current_s is None:
        return observed_s
    step = max(0.01, current_s * MEDIAN_STEP_FRACTION)
    if observed_s > current_s:
        return min(observed_s, current_s + step)
    if observed_s < current_s:
        return max(observed_s, current_s - step)
    return current_s
