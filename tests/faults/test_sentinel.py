"""Redis Sentinel: a FLUXQ_REDIS_URL naming Sentinels takes every fluxq client and Celery to the
current master, and after a failover to the new one, with no restart.

Real processes on loopback: a master, two replicas and three Sentinels, `fluxq worker` trees,
`fluxq api`, `fluxq flower` and producers. The master is killed between two batches once its writes
are on the replicas; a 500-line batch with service jobs arriving rides out the master SIGKILLed
twice mid-batch (POSTs and polls in flight) and then paused longer than the Sentinels' down-after
time, on two worker trees that keep each submit marker on a replica (FLUXQ_REDIS_MIN_REPLICAS=1);
and submits wait while no replica acknowledges.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from fluxq.tasks.enqueue import enqueue
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import Job, State
from fluxq.workers.state.redis_client import MasterWatch, connect
from fluxq.workers.state.store import ReplicaShortfall
from tests.support.api import AUTH, TOKEN, ApiServer
from tests.support.env import KEY
from tests.support.faults import (
    FaultCluster,
    assert_common,
    judge,
    request_for,
    submit_batch_file,
)
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
    api = ApiServer(cluster.env | {"FLUXQ_API_TOKEN": TOKEN}, tmp_path)
    stack.callback(api.stop)
    api.wait_up()
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
    # And `fluxq api`, started before the failover, takes a job and waits for it on the new one
    with httpx.Client(base_url=api.url, headers=AUTH, timeout=60) as client:
        body = {"endpoint": "flux-dev", "request": request_for("sentinel-api", 0)}
        created = client.post("/v1/jobs", json=body | {"job_id": "after-failover"})
        assert created.status_code == 201, created.text
        job = client.get("/v1/jobs/after-failover", params={"wait_s": 30}).json()
        assert job["state"] == "done", (job, api.log.read_text()[-2000:])
    report = judge(
        cluster, case="sentinel-failover", job_ids=[*first, *second, "after-failover"], cap=24,
        faults="SIGKILL of the Redis master between two batches (writes replicated first)",
        started_at=started, failover_s=round(failover_s, 1),
    )  # fmt: skip
    assert_common(report, cluster)
    assert report.done == 41, report.states
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
        # (a producer asking for a replica is refused, naming why; one asking none goes on)
        # (it may still have been written, so it is sent again under its id: no second job)
        with pytest.raises(ReplicaShortfall, match=r"0 of 1 Redis replicas.*MIN_REPLICAS"):
            enqueue(cluster.rt, "flux-dev", request_for("refused", 0), job_id="refused-0")
        cluster.rt.store.min_replicas = 0
        enqueue(cluster.rt, "flux-dev", request_for("refused", 0), job_id="refused-0")
        ids = ["refused-0", *cluster.enqueue_case("replica-paused", 5)]
        time.sleep(3.0)
        # Then none is sent: each waits with its marker cleared, as after a 503
        submits = cluster.sim.stats(KEY)["submits"]
        states = cluster.states(ids)
        refused = [cluster.rt.redis.hget(f"fluxq:job:{job_id}", "refused") for job_id in ids]
    finally:
        sentinels.pause_replicas(False)
    assert submits == 2, (submits, cluster.log_tail())
    assert states["admitted"] == 6, states
    assert all(count and int(count) >= 1 for count in refused), refused
    # And once they acknowledge again, each is sent once and done
    assert cluster.wait_all_terminal(ids, timeout_s=60), cluster.log_tail()
    report = judge(
        cluster, case="replica-wait", job_ids=warm + ids, cap=24,
        faults="both replicas stopped (SIGSTOP) 3 s while submits needed one",
        started_at=started,
    )  # fmt: skip
    assert_common(report, cluster)
    assert (report.done, report.submits, report.duplicate_submits) == (8, 8, 0), report.failures


@pytest.mark.timeout(420)
def test_a_batch_and_service_jobs_ride_out_three_failovers_on_two_worker_trees(
    fault_cluster: Callable[..., FaultCluster], sentinels: SentinelSet, tmp_path: Path
) -> None:
    # Given two worker trees that keep each submit marker on a replica, a 2 s model, a 500-line
    # batch sent by `fluxq batch submit` and a service enqueueing a job every 0.4 s throughout
    started = time.monotonic()
    cluster = fault_cluster(redis_url_override=sentinels.url, FLUXQ_REDIS_MIN_REPLICAS="1")
    # A quarter of the POSTs take 1 s (BFL creates the task after it): a few are always in
    # flight, so each SIGKILL can meet some
    cluster.sim.configure(
        time_scale=1.0,
        latency={"default": {"kind": "fixed", "seconds": 2.0}},
        submit_slow_rate=0.25,
        slow_delay_s=1.0,
    )
    for _ in range(2):
        cluster.start_worker(threads=8, save_threads=2)
    sent = submit_batch_file(tmp_path, "failover-batch", BATCH_LINES, cluster.env)
    assert sent.returncode == 0, sent.stderr
    batch_ids = [f"failover-batch.l{i:03d}" for i in range(BATCH_LINES)]
    with ServiceProducer(cluster) as service:
        # When the master is SIGKILLed twice (POSTs and polls in flight; each time the dead
        # server is restarted empty, as a supervisor would, and the Sentinels make it a replica)
        # and then paused (SIGSTOP) 4 s, longer than the Sentinels' 1 s down-after time
        faults: list[dict[str, float | str]] = []
        for at_done, kind in ((100, "SIGKILL"), (220, "SIGKILL"), (340, "SIGSTOP 4 s")):
            reached = wait_until(
                lambda at=at_done: cluster.states(batch_ids)["done"] >= at,
                timeout_s=120, interval_s=0.1,
            )  # fmt: skip
            assert reached, (
                f"never {at_done} done: {cluster.states(batch_ids)}\n{cluster.log_tail()}"
            )
            faults.append(_failover(cluster, sentinels, kind, batch_ids))
        # Then the batch finishes without a person
        finished = cluster.wait_all_terminal(batch_ids, timeout_s=180)
    assert finished, _stuck(cluster, batch_ids)
    assert cluster.wait_all_terminal(service.ids, timeout_s=60), _stuck(cluster, service.ids)
    ids = batch_ids + service.ids
    rates = images_per_minute([job for job in cluster.jobs(ids).values() if job], faults)
    report = judge(
        cluster, case="sentinel-three-failovers", job_ids=ids, cap=24,
        faults=(
            f"a {BATCH_LINES}-line batch and {len(service.ids)} service jobs on two worker trees: "
            "SIGKILL of the Redis master twice mid-batch, then SIGSTOP of the master 4 s"
        ),
        started_at=started, failover_s=[fault["failover_s"] for fault in faults],
        service_enqueue_errors=service.errors, service_given_up=service.given_up, **rates,
    )  # fmt: skip
    # And nothing is lost, nothing paid twice outside jobs flagged uncertain, the cap kept
    assert_common(report, cluster)
    assert service.given_up == 0, f"an enqueue failed {SERVICE_TRIES} times in a row"
    assert all(fault["posts"] for fault in faults if fault["kind"] == "SIGKILL"), faults
    # (a job failed only as uncertain: its answer was lost with a master, never sent twice)
    failed = [job for job in cluster.jobs(ids).values() if job and job.state is State.FAILED]
    assert all(job.uncertain for job in failed), report.failures
    assert report.done + report.failed == len(ids), report.states


def _stuck(cluster: FaultCluster, ids: list[str]) -> str:
    """What a case that did not finish shows: each unfinished job with its slot lease and its
    due poll, as the current master has them."""
    records = cluster.jobs(ids)
    stuck = {
        job_id: job for job_id, job in records.items() if job is None or not job.state.terminal
    }
    label = next((job.key_label for job in records.values() if job), "")
    shown = []
    for job_id, job in list(stuck.items())[:5]:
        lease = cluster.rt.redis.zscore(keys.slots(label), job_id)
        poll = cluster.rt.redis.zscore(keys.polls(label), job_id)
        shown.append(f"{job_id}: lease={lease} poll={poll} now={time.time():.1f} {job}")
    return f"{cluster.states(ids)} stuck={len(stuck)}\n" + "\n".join(shown) + cluster.log_tail()


BATCH_LINES = 500
SERVICE_EVERY_S = 0.4
SERVICE_TRIES = 5
BEFORE_WINDOW_S = 20.0
DURING_WINDOW_S = 10.0
"""Images per minute are counted from the first image (at most 20 s) to the first fault, in the
10 s after each fault began, and in the 20 s after the last one's 10 s."""


class ServiceProducer:
    """A service beside the batch: one job every SERVICE_EVERY_S on its own thread, through the
    cluster's Sentinel client. As a careful service does, it names each job and, when an
    enqueue raises (it may or may not have happened), sends it again under the same id; each
    such error is counted (``errors``), a job given up on too (``given_up``)."""

    def __init__(self, cluster: FaultCluster) -> None:
        self.cluster = cluster
        self.ids: list[str] = []
        self.errors = 0
        self.given_up = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SERVICE_EVERY_S):
            job_id = f"svc-{len(self.ids):04d}"
            request = request_for("service", len(self.ids))
            for _ in range(SERVICE_TRIES):
                try:
                    enqueue(self.cluster.rt, "flux-dev", request, batch="service", job_id=job_id)
                    break
                except Exception:  # a service retries whatever its enqueue raised
                    self.errors += 1
            else:
                self.given_up += 1
            self.ids.append(job_id)

    def __enter__(self) -> ServiceProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _failover(
    cluster: FaultCluster, sentinels: SentinelSet, kind: str, batch_ids: list[str]
) -> dict[str, float | str]:
    """Inject one fault on the current master, wait for the failover and the server's return
    as a replica; when it began (epoch s), how long the failover took, what was in flight."""
    old_port = sentinels.master_port()
    if kind == "SIGKILL":  # with POSTs in flight (answers the old master will never hear of)
        wait_until(lambda: cluster.posts_in_flight(batch_ids) >= 1, 15, interval_s=0.05)
    in_flight = cluster.posts_in_flight(batch_ids)
    began = time.time()
    if kind == "SIGKILL":
        name = sentinels.kill_master()
        sentinels.wait_failover(old_port)
        failover_s = time.time() - began
        sentinels.restart(name)
    else:
        sentinels.stop_master(True)
        try:
            sentinels.wait_failover(old_port)
            failover_s = time.time() - began
            time.sleep(max(0.0, 4.0 - failover_s))
        finally:
            sentinels.stop_master(False)
        assert wait_until(sentinels.ready, 30, interval_s=0.1), sentinels.log_tail()
    return {"kind": kind, "at": began, "failover_s": round(failover_s, 2), "posts": in_flight}


def images_per_minute(jobs: list[Job], faults: list[dict[str, float | str]]) -> dict[str, object]:
    """Images done per minute before the faults, in each fault's first 10 s, and after the
    last one settled; and the throughput each fault cost, in seconds of the steady rate."""
    done = sorted(job.times["done"] for job in jobs if "done" in job.times)

    def rate(start: float, end: float) -> float:
        count = sum(1 for t in done if start <= t < end)
        return round(60 * count / max(end - start, 1e-9), 1)

    starts = [float(fault["at"]) for fault in faults]
    before = rate(max(done[0], starts[0] - BEFORE_WINDOW_S), starts[0])
    during = [rate(at, at + DURING_WINDOW_S) for at in starts]
    after_start = starts[-1] + DURING_WINDOW_S
    after = rate(after_start, min(after_start + BEFORE_WINDOW_S, done[-1]))
    lost_s = [round(DURING_WINDOW_S * (1 - d / before), 1) if before else None for d in during]
    return {
        "images_per_min_before": before,
        "images_per_min_during": during,
        "images_per_min_after": after,
        "throughput_lost_s_per_failover": lost_s,
        "posts_in_flight_at_fault": [fault["posts"] for fault in faults],
    }


def test_a_process_leaves_a_paused_master_once_the_sentinels_replace_it(
    sentinels: SentinelSet,
) -> None:
    # Given a fluxq client on the Sentinels with its master watch, a connection to the master
    client = connect(sentinels.url, sentinel_master="mymaster", socket_timeout=2)
    watch = MasterWatch(client, every_s=0.2).start()
    try:
        client.set("before", "1")
        old_port = sentinels.master_port()
        # When the master is paused (SIGSTOP) and the Sentinels promote a replica
        sentinels.stop_master(True)
        try:
            new_port = sentinels.wait_failover(old_port)
            time.sleep(0.5)  # a watch period or two
            # Then the next write goes to the new master at once, not to the paused one
            started = time.monotonic()
            client.set("after", "2")
            took_s = time.monotonic() - started
        finally:
            sentinels.stop_master(False)
    finally:
        watch.close()
        client.close()
    assert took_s < 1.0, took_s
    with redis.Redis(port=new_port, decode_responses=True) as master:
        assert master.get("after") == "2"
