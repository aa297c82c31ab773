"""Redis Sentinel: a FLUXQ_REDIS_URL naming Sentinels takes every fluxq client and Celery to the
current master, and after a failover to the new one, with no restart.

Real processes on loopback: a master, two replicas and three Sentinels, a `fluxq worker` tree and a
producer. The master is killed between two batches once its writes are on the replicas, and
mid-batch with no wait (POSTs and polls in flight) on workers that keep each submit marker on a
replica (FLUXQ_REDIS_MIN_REPLICAS=1); and submits wait while no replica acknowledges.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.support.env import KEY
from tests.support.faults import FaultCluster, assert_common, judge
from tests.support.flower import flower_env, running_flower
from tests.support.net import wait_until
from tests.support.sentinel import SentinelSet

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

FLOWER_LOGIN = ("night-ops", "sentinel-watch-" + secrets.token_urlsafe(12))
FLOWER_AUTH = {"FLUXQ_FLOWER_USER": FLOWER_LOGIN[0], "FLUXQ_FLOWER_PASSWORD": FLOWER_LOGIN[1]}
"""Flower's API answers only behind basic auth."""


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    ha = SentinelSet(tmp_path / "sentinel")
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()


def test_workers_producers_and_flower_follow_the_new_master_after_a_failover(
    fault_cluster: Callable[..., FaultCluster], sentinels: SentinelSet, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        _follow_a_failover(
            fault_cluster(redis_url_override=sentinels.url), sentinels, stack, tmp_path
        )


def _follow_a_failover(
    cluster: FaultCluster, sentinels: SentinelSet, stack: ExitStack, tmp_path: Path
) -> None:
    # Given a worker tree, a producer and `fluxq flower` on FLUXQ_REDIS_URL=sentinel://...
    started = time.monotonic()
    cluster.start_worker(threads=4, save_threads=2)
    flower = stack.enter_context(
        running_flower(flower_env(sentinels.url, FLOWER_AUTH), tmp_path, tmp_path / "flower.log")
    )
    first = cluster.enqueue_case("sentinel-before", 20)
    assert cluster.wait_all_terminal(first, timeout_s=60), cluster.log_tail()
    # When every write is on the replica and the master is SIGKILLed
    assert sentinels.replicated() == 2
    old_master = sentinels.master_port()
    sentinels.kill_master()
    killed = time.monotonic()
    new_master = sentinels.wait_failover()
    failover_s = time.monotonic() - killed
    assert new_master != old_master
    # Then the same producer and the same worker tree carry a second batch on the new master
    second = cluster.enqueue_case("sentinel-after", 20)
    assert cluster.wait_all_terminal(second, timeout_s=90), cluster.log_tail()
    report = judge(
        cluster, case="sentinel-failover", job_ids=first + second, cap=24,
        faults="SIGKILL of the Redis master between two batches (writes replicated first)",
        started_at=started, failover_s=round(failover_s, 1),
    )  # fmt: skip
    assert_common(report, cluster)
    assert report.done == 40, report.states
    assert report.duplicate_submits == 0
    # And `fluxq batch status` reads both batches through the Sentinels (its fast path, a
    # plain socket to one server, leaves a Sentinel URL to the full command)
    for batch in ("sentinel-before", "sentinel-after"):
        shown = subprocess.run(
            [sys.executable, "-P", "-m", "fluxq", "batch", "status", batch, "--json"],
            env=cluster.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["counts"]["done"] == 20

    # And Flower, started before the failover, lists the second batch's tasks (its events came
    # through the new master) and reads the new master's queues
    def listed() -> bool:
        found = httpx.get(
            f"{flower.base_url}/api/tasks", params={"search": "batch=sentinel-after"},
            auth=FLOWER_LOGIN, timeout=10,
        ).json()  # fmt: skip
        return len({task["args"].split(" ", 1)[0] for task in found.values()}) == 20

    assert wait_until(listed, timeout_s=30), flower.log_text()[-3000:]
    broker = httpx.get(f"{flower.base_url}/broker", auth=FLOWER_LOGIN, timeout=30)
    assert broker.status_code == 200, broker.text[:500]
    assert "fluxq.submit" in broker.text


def test_a_submit_whose_marker_no_replica_holds_waits_and_is_sent_once_one_does(
    fault_cluster: Callable[..., FaultCluster], sentinels: SentinelSet
) -> None:
    # Given workers that need one replica to hold a submit marker before a POST (200 ms wait)
    started = time.monotonic()
    cluster = fault_cluster(
        redis_url_override=sentinels.url,
        FLUXQ_REDIS_MIN_REPLICAS="1",
        FLUXQ_REDIS_REPLICA_WAIT_MS="200",
    )
    cluster.start_worker(threads=4, save_threads=2)
    warm = cluster.enqueue_case("replica-warm", 2)
    assert cluster.wait_all_terminal(warm, timeout_s=60), cluster.log_tail()
    # When the replicas stop acknowledging (SIGSTOP) and jobs arrive
    sentinels.pause_replicas(True)
    try:
        ids = cluster.enqueue_case("replica-paused", 5)
        time.sleep(3.0)
        # Then none is sent: each waits with its marker cleared, as after a 503
        submits = cluster.sim.stats(KEY)["submits"]
        states = cluster.states(ids)
        refused = [cluster.rt.redis.hget(f"fluxq:job:{job_id}", "refused") for job_id in ids]
    finally:
        sentinels.pause_replicas(False)
    assert submits == 2, (submits, cluster.log_tail())
    assert states["admitted"] == 5, states
    assert all(count and int(count) >= 1 for count in refused), refused
    # And once they acknowledge again, each is sent once and done
    assert cluster.wait_all_terminal(ids, timeout_s=60), cluster.log_tail()
    report = judge(
        cluster, case="replica-wait", job_ids=warm + ids, cap=24,
        faults="both replicas stopped (SIGSTOP) 3 s while submits needed one",
        started_at=started,
    )  # fmt: skip
    assert_common(report, cluster)
    assert (report.done, report.submits, report.duplicate_submits) == (7, 7, 0)


def test_the_master_killed_mid_batch_with_posts_in_flight_loses_no_job_and_pays_none_twice(
    fault_cluster: Callable[..., FaultCluster], sentinels: SentinelSet
) -> None:
    # Given a worker tree needing one replica for each submit marker, mid-batch on a 2 s model
    started = time.monotonic()
    cluster = fault_cluster(redis_url_override=sentinels.url, FLUXQ_REDIS_MIN_REPLICAS="1")
    cluster.sim.configure(time_scale=1.0, latency={"default": {"kind": "fixed", "seconds": 2.0}})
    cluster.start_worker(threads=8, save_threads=2)
    ids = cluster.enqueue_case("failover-mid", 80)
    busy = wait_until(
        lambda: cluster.states(ids)["done"] >= 20 and cluster.states(ids)["submitted"] >= 10,
        timeout_s=60,
        interval_s=0.05,
    )
    assert busy, f"never mid-batch: {cluster.states(ids)}\n{cluster.log_tail()}"
    # When the master is SIGKILLed with no wait for its last writes
    in_flight = cluster.states(ids)
    sentinels.kill_master()
    killed = time.monotonic()
    sentinels.wait_failover()
    failover_s = time.monotonic() - killed
    # Then the batch finishes on the new master without a person: nothing lost, nothing paid
    # twice outside jobs flagged uncertain, the cap kept
    cluster.wait_all_terminal(ids, timeout_s=150)
    report = judge(
        cluster, case="sentinel-failover-mid-batch", job_ids=ids, cap=24,
        faults="SIGKILL of the Redis master mid-batch (80 jobs, POSTs and polls in flight)",
        started_at=started, failover_s=round(failover_s, 1),
        states_at_kill=dict(in_flight),
    )  # fmt: skip
    assert_common(report, cluster)
    assert report.done + report.failed == len(ids), report.states
    assert report.failed == sum(1 for job in cluster.jobs(ids).values() if job and job.uncertain)
