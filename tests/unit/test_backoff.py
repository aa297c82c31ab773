"""Backoff bounds as tables. No sleeping."""

from __future__ import annotations

import random

import pytest

from fluxq.workers.backoff import backoff_s


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(1, 0.5, 1), (2, 1, 2), (4, 4, 8), (20, 30, 60)]
)
def test_backoff_doubles_per_attempt_with_jitter_and_a_cap(
    attempt: int, low: float, high: float
) -> None:
    rng = random.Random(attempt)
    draws = [backoff_s(attempt, base_s=1.0, cap_s=60.0, rng=rng) for _ in range(200)]
    assert min(draws) >= low
    assert max(draws) <= high
    assert len(set(draws)) > 100  # jittered, so retries from many jobs do not align
