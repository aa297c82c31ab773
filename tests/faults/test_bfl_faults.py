"""Every fault the simulator can inject at once, and an account running out of credits mid-batch."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from fluxq.config.catalog import estimate_credits, validate_request
from fluxq.workers.state.limiter import PauseKind
from tests.support.env import KEY
from tests.support.faults import (
    FaultCluster,
    assert_common,
    judge,
    request_for,
    unreadable,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ALL_FAULTS = {
    "submit_500_rate": 0.03,
    "submit_503_rate": 0.03,
    "poll_500_rate": 0.05,
    "poll_503_rate": 0.05,
    "submit_drop_rate": 0.03,
    "poll_drop_rate": 0.05,
    "download_drop_rate": 0.05,
    "submit_lost_rate": 0.03,
    "phantom_429_rate": 0.05,
    "slow_rate": 0.05,
    "slow_delay_s": 1.0,
    "error_rate": 0.05,
    "content_moderated_rate": 0.05,
    "rng_seed": 2024,
}
"""Modest rates of every fault; slow answers (1 s) stay inside the 3 s read timeout."""


def reason_kind(reason: str) -> str:
    """The first words of a failure reason: what the report counts failures by."""
    return reason.split(":", 1)[0].split("(", 1)[0].strip()[:40]


def test_every_simulator_fault_at_once_ends_every_job_with_a_readable_reason(
    fault_cluster: Callable[..., FaultCluster],
) -> None:
    # Given one worker tree, a cap of 12, and BFL misbehaving in every way the simulator knows
    started = time.monotonic()
    cap, total = 12, 60
    cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(cap), FLUXQ_POLL_DEADLINE_S="10")
    cluster.sim.configure(**ALL_FAULTS)
    cluster.start_worker(threads=8, save_threads=2)
    case = "all-faults"
    # When 60 jobs are enqueued
    ids = cluster.enqueue_case(case, total)
    cluster.wait_all_terminal(ids, timeout_s=90)
    jobs = [job for job in cluster.jobs(ids).values() if job is not None]
    kinds = Counter(reason_kind(job.reason or "") for job in jobs if job.state.value == "failed")
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults="every simulator fault at modest rates, rng_seed 2024",
        started_at=started,
        failure_kinds=dict(kinds),
    )
    # Then every job is terminal with a reason a person can read, nothing unflagged was POSTed
    # twice, and the cap held
    assert_common(report, cluster)
    assert report.done + report.failed == total, report.states
    assert report.done > 0
    fired = [k for k in cluster.sim.stats()["counters"] if k.startswith("fault_")]
    assert len(fired) >= 6, f"too few kinds of fault fired to call this 'all at once': {fired}"
    bad = {job_id: reason for job_id, reason in report.failures.items() if unreadable(reason)}
    assert bad == {}, bad
    for job in jobs:
        if job.state.value == "failed" and job.uncertain:
            assert (job.reason or "").startswith("uncertain:"), (job.job_id, job.reason)


def test_running_out_of_credits_mid_batch_pauses_admission_and_a_top_up_finishes_every_job(
    fault_cluster: Callable[..., FaultCluster],
) -> None:
    # Given an account with credits for exactly 10 of 30 jobs, and one worker tree
    started = time.monotonic()
    cap, total, affordable = 8, 30, 10
    cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(cap), FLUXQ_CREDITS_CHECK_INTERVAL_S="1")
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 15.0}})
    case = "credits"
    cost = estimate_credits("flux-dev", validate_request("flux-dev", request_for(case, 0)))
    cluster.sim.set_credits(KEY, cost * affordable)
    cluster.start_worker(threads=8, save_threads=2)
    # When the batch runs the account dry
    ids = cluster.enqueue_case(case, total)
    assert wait_until(lambda: cluster.sim.stats(KEY)["payment_required_402"] >= 1, timeout_s=30), (
        cluster.log_tail()
    )
    # Then admission pauses: for 3 s no submit is accepted and no 402 is provoked again
    time.sleep(1.0)
    pause = cluster.rt.limiter.paused(now_s=time.time())
    before = cluster.sim.stats(KEY)
    time.sleep(3.0)
    during = cluster.sim.stats(KEY)
    states_paused = dict(cluster.states(ids))
    # And when credits are topped up, every job is done
    cluster.sim.set_credits(KEY, 1_000_000.0)
    cluster.wait_all_terminal(ids, timeout_s=60)
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults=f"credits for {affordable} of {total} jobs, then a top-up",
        started_at=started,
        submits_before_top_up=during["submits"],
        states_while_paused=states_paused,
        pause=str(pause),
    )
    assert pause is not None, "admission was not paused after a 402"
    assert pause.kind is PauseKind.OUT_OF_CREDITS, pause
    assert during["submits"] == before["submits"] == affordable, (before, during)
    assert during["payment_required_402"] == before["payment_required_402"], (before, during)
    assert states_paused.get("failed", 0) == 0, report.failures
    assert_common(report, cluster)
    assert report.done == total, report.failures
    assert report.failed == 0, report.failures
    assert report.submits == total
    assert report.duplicate_submits == 0
