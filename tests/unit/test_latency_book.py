"""The latency book against a real Redis: shared observations, per-size models, cold start."""

from __future__ import annotations

import math

import pytest
import redis

from fluxq.config.settings import load_settings
from fluxq.workers.poll_schedule import budget_schedule
from fluxq.workers.runtime import typical_times
from fluxq.workers.state import keys
from fluxq.workers.state.latency_book import (
    COLD_INTERVAL_S,
    COLD_REFIT_INTERVAL_S,
    MIN_OBSERVATIONS,
    REFIT_INTERVAL_S,
    WINDOW,
    LatencyBook,
    size_class,
)
from tests.support.env import KEY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(client: redis.Redis[str], clock: Clock | None = None) -> LatencyBook:
    return LatencyBook(client, budget=0.65, prior_median_s=5.0, clock=clock or Clock())


def test_observations_are_kept_per_endpoint_and_size_and_trimmed(
    redis_client: redis.Redis[str],
) -> None:
    latencies = book(redis_client)
    for i in range(WINDOW + 10):
        latencies.observe("flux-dev", "1.0mp", 1.0, 1.5 + i / 1000)
    latencies.observe("flux-dev", "1.0mp", 2.0, 2.0)  # not an interval: ignored
    assert redis_client.llen(keys.latency("flux-dev")) == WINDOW
    assert redis_client.llen(keys.latency("flux-dev", "1.0mp")) == WINDOW
    assert (
        redis_client.lindex(keys.latency("flux-dev"), 0)
        == f"1.0000 {1.5 + (WINDOW + 9) / 1000:.4f}"
    )


def test_a_cold_endpoint_polls_like_the_loop_until_it_has_eight_observations(
    redis_client: redis.Redis[str],
) -> None:
    clock = Clock()
    latencies = book(redis_client, clock)
    plan = latencies.schedule("flux-dev", "default")
    assert plan.next_delay_s(0.0, min_delay_s=0.05, max_tail_gap_s=5.0) == COLD_INTERVAL_S
    assert plan.next_delay_s(3.1, min_delay_s=0.05, max_tail_gap_s=5.0) == pytest.approx(
        COLD_INTERVAL_S - 0.1
    )
    for _ in range(MIN_OBSERVATIONS - 1):
        latencies.observe("flux-dev", "default", 0.75, 1.0)
    clock.now += COLD_REFIT_INTERVAL_S
    assert latencies.schedule("flux-dev", "default").times_s == ()  # still the loop
    latencies.observe("flux-dev", "default", 0.75, 1.0)
    clock.now += COLD_REFIT_INTERVAL_S
    model = latencies.model("flux-dev", "default")
    assert model.median_s < 1.5  # eight observations outweigh the 5 s prior
    assert latencies.schedule("flux-dev", "default") == budget_schedule(model, 0.65)


def test_a_size_with_few_observations_borrows_the_endpoints_model(
    redis_client: redis.Redis[str],
) -> None:
    latencies = book(redis_client)
    for _ in range(40):
        latencies.observe("flux-dev", "1.0mp", 0.9, 1.1)
    for _ in range(MIN_OBSERVATIONS - 1):
        latencies.observe("flux-dev", "4.0mp", 7.9, 8.1)
    # The 4 MP list is too short: its plan is the endpoint's (dominated by the 1 s tasks)
    assert latencies.model("flux-dev", "4.0mp").median_s < 2.0
    for _ in range(20):
        latencies.observe("flux-dev", "4.0mp", 7.9, 8.1)
    fresh = book(redis_client)
    assert fresh.model("flux-dev", "4.0mp").median_s == pytest.approx(8.0, rel=0.1)
    assert fresh.model("flux-dev", "1.0mp").median_s == pytest.approx(1.0, rel=0.1)


def test_a_cold_model_is_refitted_sooner(redis_client: redis.Redis[str]) -> None:
    clock = Clock()
    latencies = book(redis_client, clock)
    latencies.schedule("flux-dev", "default")
    for _ in range(MIN_OBSERVATIONS):
        latencies.observe("flux-dev", "default", 0.9, 1.1)
    assert latencies.model("flux-dev", "default").median_s == pytest.approx(5.0)  # the prior
    clock.now += COLD_REFIT_INTERVAL_S
    assert latencies.model("flux-dev", "default").median_s < 1.5


def test_a_process_refits_at_most_every_interval(redis_client: redis.Redis[str]) -> None:
    clock = Clock()
    latencies = book(redis_client, clock)
    for _ in range(20):
        latencies.observe("flux-dev", "default", 0.9, 1.1)
    first = latencies.model("flux-dev", "default")
    for _ in range(200):
        latencies.observe("flux-dev", "default", 2.9, 3.1)
    assert latencies.model("flux-dev", "default") == first  # cached
    clock.now += REFIT_INTERVAL_S
    assert latencies.model("flux-dev", "default").median_s == pytest.approx(3.0, rel=0.1)


def test_a_settled_fit_is_not_biased_by_the_prior(redis_client: redis.Redis[str]) -> None:
    latencies = book(redis_client)
    for i in range(WINDOW):
        x = 1.0 * math.exp(0.3 * math.sin(i))  # spread around 1 s, far from the 5 s prior
        latencies.observe("flux-dev", "default", x - 0.01, x + 0.01)
    model = latencies.model("flux-dev", "default")
    assert model.median_s == pytest.approx(1.0, rel=0.05)
    assert model.sigma < 0.25


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1024, 1024, "1.0mp"), (1440, 1440, "2.0mp"), (None, 768, "default"), ("a", 3, "default")],
)
def test_size_classes(width: object, height: object, expected: str) -> None:
    assert size_class(width, height) == expected


def test_a_refit_that_barely_moves_keeps_the_plan(redis_client: redis.Redis[str]) -> None:
    # A task polled on one plan and then a slightly shifted one pays for polls on both grids
    clock = Clock()
    latencies = book(redis_client, clock)
    for i in range(200):
        x = 5.0 * math.exp(0.4 * math.sin(i))
        latencies.observe("flux-dev", "default", x - 0.2, x + 0.2)
    first = latencies.schedule("flux-dev", "default")
    for _ in range(4):  # nudges the median by about 1 %
        latencies.observe("flux-dev", "default", 6.3, 6.7)
    clock.now += REFIT_INTERVAL_S
    assert latencies.schedule("flux-dev", "default") is first
    for _ in range(300):  # a real change: BFL got slower
        latencies.observe("flux-dev", "default", 9.8, 10.2)
    clock.now += REFIT_INTERVAL_S
    assert latencies.schedule("flux-dev", "default") != first


def test_each_endpoint_starts_from_its_catalog_time_unless_the_user_set_a_prior(
    redis_client: redis.Redis[str],
) -> None:
    # The runtime's priors come from the catalog's typical times...
    settings = load_settings(bfl_api_key=KEY)
    times = typical_times(settings)
    assert times["flux-2-klein-4b"] == settings.catalog["flux-2-klein-4b"].typical_s
    assert times["flux-2-klein-4b"] < times["flux-pro-1.1-ultra"]
    latencies = LatencyBook(redis_client, budget=0.65, prior_median_s=5.0, typical_s=times)
    klein = latencies.model("flux-2-klein-4b", "default")
    assert klein.median_s == pytest.approx(times["flux-2-klein-4b"])
    # ...an endpoint the table gives no time starts from the setting's prior
    assert latencies.model("not-in-the-table", "default").median_s == pytest.approx(5.0)
    # ...and a prior the user set applies to every endpoint
    assert typical_times(load_settings(bfl_api_key=KEY, poll_prior_median_s=2.0)) == {}
