"""The benchmark's yardsticks on hand-made inputs: list scheduling, utilisation, percentiles."""

from __future__ import annotations

import pytest

from bench.metrics import refill_gaps
from bench.oracle import list_schedule, percentile, utilisation
from bench.plan import SCENARIOS, Side, choose_sides, parse_side
from fluxq.config.catalog import CATALOG, validate_request
from fluxq.config.requests import Flux3VideoInputs


def test_a_long_job_and_short_ones_fill_two_slots_exactly() -> None:
    # Given cap 2 and durations 3, 1, 1, 1: the short ones run one after another beside the long
    schedule = list_schedule([3, 1, 1, 1], cap=2)
    # Then the makespan is the long job's and both slots were busy throughout
    assert schedule.makespan_s == 3
    assert schedule.busy_s == 6
    assert schedule.utilisation == 1.0


def test_the_tail_idles_when_jobs_run_out() -> None:
    # Given cap 2 and three 1 s jobs, Then the third runs alone: 3 slot-seconds of 4
    schedule = list_schedule([1, 1, 1], cap=2)
    assert schedule.makespan_s == 2
    assert schedule.utilisation == pytest.approx(0.75)


def test_jobs_are_placed_in_order_not_rearranged() -> None:
    # Given cap 2 and a long job last: list scheduling starts it when the first slot frees (at 1)
    schedule = list_schedule([1, 1, 4], cap=2)
    # Then it ends at 5 (a rearranging scheduler could not do better here, but order is kept)
    assert schedule.makespan_s == 5
    assert schedule.utilisation == pytest.approx(6 / 10)


def test_fewer_jobs_than_slots_and_no_jobs() -> None:
    assert list_schedule([2, 1], cap=24).makespan_s == 2
    assert list_schedule([2, 1], cap=24).utilisation == pytest.approx(3 / 48)
    assert list_schedule([], cap=3).utilisation == 0.0


def test_utilisation_is_busy_over_cap_times_span() -> None:
    assert utilisation(6, 2, 3) == 1.0
    assert utilisation(12, 24, 1) == 0.5
    assert utilisation(5, 2, 0) == 0.0
    with pytest.raises(ValueError, match="cap"):
        utilisation(1, 0, 1)


def test_percentiles_interpolate_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(list(range(101)), 95) == 95
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile(values, 101)


def test_scenarios_give_p95_from_median_and_sigma() -> None:
    # p95 = p50 * exp(1.6448536 * sigma)
    assert SCENARIOS["l5"].latency().p95_s == pytest.approx(9.65407, rel=1e-5)
    assert SCENARIOS["l1"].latency().p95_s == pytest.approx(1.63797, rel=1e-5)
    assert SCENARIOS["l1"].prompt(7) == "bench l1 job 7"


def test_custom_sides_carry_their_environment_and_run_after_the_named_ones() -> None:
    side = parse_side("tuned:FLUXQ_POLL_BUDGET=1.0; FLUXQ_ACTIVE_CAP=20")
    assert side == Side("tuned", "fluxq", {"FLUXQ_POLL_BUDGET": "1.0", "FLUXQ_ACTIVE_CAP": "20"})
    chosen = choose_sides(["naive", "fluxq"], [side])
    assert [s.name for s in chosen] == ["naive", "fluxq", "tuned"]
    with pytest.raises(ValueError, match="unknown side"):
        choose_sides(["nope"], [])
    with pytest.raises(ValueError, match="ENV=VALUE"):
        parse_side("x:NOVALUE")


def test_refill_gaps_measure_each_freed_slot_until_the_next_submit() -> None:
    # cap 2: tasks a, b start at 0; c starts 0.05 s after a ends (1.0), d 0.2 s after b (2.0)
    tasks = [
        {"created_at": 0.0, "ready_at": 1.0},
        {"created_at": 0.0, "ready_at": 2.0},
        {"created_at": 1.05, "ready_at": 3.0},
        {"created_at": 2.2, "ready_at": 4.0},
    ]
    assert [round(gap, 6) for gap in refill_gaps(tasks, 2)] == [0.05, 0.2]
    assert refill_gaps(tasks[:2], 2) == []


def test_the_video_scenario_sends_valid_t2v_requests_five_at_a_time_and_a_bounded_count() -> None:
    video = SCENARIOS["video"]
    # Its requests pass fluxq's own per-mode checks for the endpoint it names
    request = validate_request(video.endpoint, video.request(3))
    assert isinstance(request, Flux3VideoInputs)
    assert (request.mode, request.prompt) == ("t2v", "bench video job 3")
    # It holds the endpoint's own cap inside the account's, and its median is the catalog's
    assert (video.slots(24), video.slots(3)) == (5, 3)
    assert video.median_s == CATALOG[video.endpoint].typical_s
    assert (video.jobs(960), video.jobs(10)) == (100, 10)
    # The image scenarios are unchanged: the account's cap, every job, 256x256 images
    assert (SCENARIOS["l1"].slots(24), SCENARIOS["l1"].jobs(960)) == (24, 960)
    assert SCENARIOS["l1"].request(0) == {"prompt": "bench l1 job 0", "width": 256, "height": 256}
