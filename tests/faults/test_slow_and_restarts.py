"""Slow POSTs against the slot lease, and Redis restarting under a running worker tree."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.support.faults import (
    FaultCluster,
    RestartableRedis,
    alive,
    assert_common,
    judge,
    sweep_actions,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def test_posts_slower_than_most_of_the_lease_keep_their_slots_and_none_is_uncertain(
    fault_cluster: Callable[..., FaultCluster],
) -> None:
    # Given a 7 s lease (renewed every 1.75 s while a POST is in flight), a read timeout of 5 s,
    # and every BFL answer taking 4.5 s: each POST outlives 2 renewal intervals.
    # (A POST slower than the lease itself cannot happen any more: FLUXQ_LEASE_TTL_S must exceed
    # the four HTTP timeouts summed, so such a POST ends in a read timeout first.)
    started = time.monotonic()
    cap, total, slow_s = 4, 8, 4.5
    cluster = fault_cluster(
        FLUXQ_ACTIVE_CAP=str(cap),
        FLUXQ_LEASE_TTL_S="7",
        FLUXQ_HTTP_CONNECT_TIMEOUT_S="0.5",
        FLUXQ_HTTP_WRITE_TIMEOUT_S="0.5",
        FLUXQ_HTTP_POOL_TIMEOUT_S="0.5",
        FLUXQ_HTTP_READ_TIMEOUT_S="5",
    )
    cluster.sim.configure(slow_rate=1.0, slow_delay_s=slow_s)
    cluster.start_worker(threads=8, save_threads=2)
    case = "slow-post"
    # When 8 jobs go through a cap of 4
    ids = cluster.enqueue_case(case, total)
    cluster.wait_all_terminal(ids, timeout_s=60)
    sweep = sweep_actions(cluster)
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults=f"every POST and GET answered after {slow_s} s (lease 7 s)",
        started_at=started,
        sweep=sweep,
    )
    # Then every job is done, none uncertain, the sweep never found a lapsed lease, cap kept
    assert_common(report, cluster)
    assert report.done == total, report.failures
    assert report.uncertain == 0, report.failures
    assert report.duplicate_submits == 0
    assert not any(sweep.values()), f"the sweep recovered jobs of live POSTs: {sweep}"


def test_redis_restarting_three_times_under_load_leaves_the_supervisor_running_and_no_job_lost(
    fault_cluster: Callable[..., FaultCluster], own_redis: RestartableRedis
) -> None:
    # Given a worker tree on a Redis of its own (AOF on), busy with 40 jobs of a 1.5 s model
    started = time.monotonic()
    cap, total = 8, 40
    # (A poll deadline longer than the outage plus a lease: this case is about the restarts.)
    cluster = fault_cluster(
        redis_url_override=own_redis.url, FLUXQ_ACTIVE_CAP=str(cap), FLUXQ_POLL_DEADLINE_S="60"
    )
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 75.0}})
    supervisor = cluster.start_worker(threads=8, save_threads=2)
    case = "redis-restarts"
    ids = cluster.enqueue_case(case, total)
    assert wait_until(lambda: cluster.states(ids)["done"] >= 2, timeout_s=30), cluster.log_tail()
    states_at_first_stop = dict(cluster.states(ids))
    # When redis-server is stopped (SIGTERM, SIGKILL, SIGTERM), down 3 s, and started again on
    # the same port and directory, three times
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
        own_redis.stop(sig)
        time.sleep(3)
        own_redis.start()
        time.sleep(2)
    finished = cluster.wait_all_terminal(ids, timeout_s=90)
    exits = cluster.log_text().count("worker process exited")
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults="redis-server stopped 3 times (SIGTERM, SIGKILL, SIGTERM), 3 s down each",
        started_at=started,
        states_at_first_stop=states_at_first_stop,
        redis_starts=own_redis.starts,
        celery_child_restarts=exits,
        supervisor_alive=alive(supervisor),
        sweep=sweep_actions(cluster),
    )
    # Then the supervisor is still running, every job is terminal, none was POSTed twice
    # outside the uncertain ones, and the cap held
    assert alive(supervisor), (
        f"`fluxq worker` exited: {supervisor.returncode}\n{cluster.log_tail()}"
    )
    assert finished, f"not finished: {report.states}\n{cluster.log_tail()}"
    assert_common(report, cluster)
    # (every failure is an uncertain job; an uncertain one whose late answer came is done, and
    # keeps its flag, so failed may be below uncertain)
    assert report.failed <= report.uncertain, report.failures
    assert all(why.startswith("uncertain") for why in report.failures.values()), report.failures
