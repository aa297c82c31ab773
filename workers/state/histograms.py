"""Latency histograms kept in Redis, so any exporter process can serve them (workers serve none).

Each observation adds 1 to one bucket of a hash per (histogram, endpoint), plus its sum and count,
in one pipelined round trip; ``read`` returns cumulative buckets as Prometheus expects them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from fluxq.workers.state import keys

BUCKETS_S: tuple[float, ...] = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
"""Upper bounds in seconds: fine below a second (Ready→saved), coarse up to minutes (generation)."""

SUBMIT_TO_READY = "submit_to_ready"
READY_TO_SAVED = "ready_to_saved"
HISTOGRAMS = (SUBMIT_TO_READY, READY_TO_SAVED)


def observe(client: redis.Redis[str], name: str, endpoint: str, seconds: float) -> None:
    """Count one duration in its bucket (the first bound it does not exceed, else +Inf)."""
    index = bisect.bisect_left(BUCKETS_S, seconds)
    bucket = f"{BUCKETS_S[index]!r}" if index < len(BUCKETS_S) else "+Inf"
    key = keys.timings(name, endpoint)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(key, bucket, 1)
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", max(0.0, seconds))
    pipe.sadd(keys.TIMED_ENDPOINTS, endpoint)
    pipe.execute()


@dataclass(frozen=True)
class Histogram:
    """One endpoint's histogram: cumulative (upper bound, count) pairs ending with +Inf, and sum."""

    endpoint: str
    buckets: Sequence[tuple[str, float]]
    total: float


def read(client: redis.Redis[str], name: str) -> list[Histogram]:
    """Every endpoint's histogram ``name`` (one round trip per endpoint seen)."""
    endpoints = sorted(client.smembers(keys.TIMED_ENDPOINTS))
    pipe = client.pipeline(transaction=False)
    for endpoint in endpoints:
        pipe.hgetall(keys.timings(name, endpoint))
    found: list[Histogram] = []
    for endpoint, raw in zip(endpoints, pipe.execute(), strict=True):
        if not raw:
            continue
        running = 0.0
        cumulative: list[tuple[str, float]] = []
        for bound in BUCKETS_S:
            running += float(raw.get(repr(bound), 0))
            cumulative.append((repr(bound), running))
        cumulative.append(("+Inf", float(raw.get("count", 0))))
        found.append(Histogram(endpoint, cumulative, float(raw.get("sum", 0.0))))
    return found
