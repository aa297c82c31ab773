"""Timing rules as tables: poll delays, backoff bounds, the median tracker. No sleeping."""

from __future__ import annotations

import random

import pytest

from workers.timing import backoff_s, next_poll_delay_s, update_median_s


@pytest.mark.parametrize(
    ("elapsed_s", "median_s", "expected_s"),
    [
        (0.0, 10.0, 9.0),  # first poll just before the median finish
        (4.0, 10.0, 5.0),  # a redelivered poll waits only the remainder
        (8.9, 10.0, 0.5),  # never below the minimum step
        (9.0, 10.0, 0.5),  # at the expected finish: short steps
        (19.0, 10.0, 1.5),  # ten seconds late: steps widen slowly
        (200.0, 10.0, 5.0),  # very late: never above the maximum step
        (0.0, 0.1, 0.5),  # a fast model still waits the minimum
        (0.0, 60.0, 54.0),  # a slow model's first poll may exceed the max step
    ],
)
def test_poll_delay_waits_for_the_median_then_takes_short_steps(
    elapsed_s: float, median_s: float, expected_s: float
) -> None:
    delay = next_poll_delay_s(
        elapsed_s=elapsed_s, median_s=median_s, min_delay_s=0.5, max_delay_s=5.0
    )
    assert delay == pytest.approx(expected_s)


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


def test_the_median_tracker_converges_to_the_median_not_the_mean() -> None:
    # Given a long-tailed latency: 90 % at 4 s and 10 % at 60 s (mean 9.6 s, median 4 s)
    rng = random.Random(7)
    estimate: float | None = None
    for _ in range(2000):
        observed = 60.0 if rng.random() < 0.1 else 4.0
        estimate = update_median_s(estimate, observed)
    # Then the estimate sits near 4 s, far from the mean
    assert estimate is not None
    assert 3.5 <= estimate <= 5.5


def test_the_median_tracker_starts_at_the_first_observation_and_never_overshoots() -> None:
    assert update_median_s(None, 3.0) == 3.0
    assert update_median_s(10.0, 10.2) == pytest.approx(10.2)
    assert update_median_s(10.0, 50.0) == pytest.approx(10.5)
    assert update_median_s(10.0, 1.0) == pytest.approx(9.5)
