"""Several `fluxq worker` trees on one Redis share one account cap exactly."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.support.faults import FaultCluster, assert_common, judge

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

CAP = 5
JOBS = 40


@pytest.mark.parametrize("trees", [2, 3])
def test_worker_trees_on_one_cap_fill_it_exactly_and_never_exceed_it(
    fault_cluster: Callable[..., FaultCluster], trees: int
) -> None:
    # Given `trees` worker trees on one Redis, a fluxq cap of 5, and a 0.5 s model
    started = time.monotonic()
    cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(CAP))
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 25.0}})
    for _ in range(trees):
        cluster.start_worker(threads=4, save_threads=2)
    # When 40 jobs are enqueued
    case = f"shared-cap-{trees}"
    ids = cluster.enqueue_case(case, JOBS)
    cluster.wait_all_terminal(ids, timeout_s=60)
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=CAP,
        faults=f"{trees} worker trees competing for one cap",
        started_at=started,
        trees=trees,
    )
    # Then every job is done, each submitted once, and the simulator saw exactly the cap at most
    assert_common(report, cluster)
    assert report.done == JOBS, report.states
    assert report.duplicate_submits == 0
    assert report.submits == JOBS
    assert report.max_active == CAP, f"the cap was not reached: {report.max_active}"
