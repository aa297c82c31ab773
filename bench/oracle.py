"""The yardsticks: an ideal scheduler's makespan on the same per-job latencies, and percentiles.

The oracle starts job i the instant a slot frees, with zero gap: no client can keep the cap
busier in submission order, so each side's utilisation is also shown as a share of it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """The oracle's outcome: when the last job ends, and how busy the cap was meanwhile."""

    makespan_s: float
    busy_s: float
    utilisation: float


def utilisation(busy_s: float, cap: int, span_s: float) -> float:
    """Slot-seconds used over slot-seconds available: ``busy / (cap * span)``; 0 for no span."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    return busy_s / (cap * span_s) if span_s > 0 else 0.0


def list_schedule(durations: Sequence[float], cap: int) -> Schedule:
    """List scheduling: jobs in order, each on the slot that frees first, with no gap."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    free_at = [0.0] * cap
    for duration in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + duration)
    makespan = max(free_at)
    busy = math.fsum(durations)
    return Schedule(makespan_s=makespan, busy_s=busy, utilisation=utilisation(busy, cap, makespan))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), interpolating between the closest ranks; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
