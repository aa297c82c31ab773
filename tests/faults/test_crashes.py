"""A `fluxq worker` tree SIGKILLed mid-POST, mid-poll and mid-save; a new tree finishes it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxq.simulator.server import SimulatorServer
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.state.jobs import State
from tests.support.env import KEY
from tests.support.faults import (
    FaultCluster,
    assert_common,
    children_of,
    judge,
    request_for,
    slow_delivery,
    sweep_actions,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def test_a_worker_killed_during_slow_submits_loses_nothing_and_resubmits_nothing(
    fault_cluster: Callable[..., FaultCluster],
) -> None:
    # Given one worker tree, a cap of 8, and every BFL answer (POST and GET) taking 1.5 s
    started = time.monotonic()
    cap, total = 8, 30
    cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(cap), FLUXQ_POLL_DEADLINE_S="15")
    cluster.sim.configure(slow_rate=1.0, slow_delay_s=1.5)
    first = cluster.start_worker(threads=8, save_threads=2)
    case = "kill-mid-submit"
    ids = cluster.enqueue_case(case, total)
    # When the tree is SIGKILLed while POSTs are in flight and some jobs are done
    in_flight = wait_until(
        lambda: cluster.states(ids)["done"] >= 4 and cluster.posts_in_flight(ids) >= 2,
        timeout_s=45,
        interval_s=0.05,
    )
    assert in_flight, f"no POST in flight to kill: {cluster.states(ids)}\n{cluster.log_tail()}"
    posts_at_kill = cluster.posts_in_flight(ids)
    cluster.kill_worker(first)
    # And BFL is fast again, and a new tree starts
    cluster.sim.configure(slow_rate=0.0)
    cluster.start_worker(threads=8, save_threads=2)
    cluster.wait_all_terminal(ids, timeout_s=60)
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults=f"SIGKILL of the worker tree with {posts_at_kill} POSTs in flight",
        started_at=started,
        posts_in_flight_at_kill=posts_at_kill,
        sweep=sweep_actions(cluster),
    )
    # Then every job is terminal, none was POSTed twice, the cap held, and only jobs whose POST
    # may have reached BFL are failed, as uncertain (counted in the batch too). On a loaded
    # machine a lease can also lapse during a slow POST that lives on: that job is failed as
    # uncertain too, and recovered (done) when the answer comes: uncertain, not failed.
    assert_common(report, cluster)
    assert report.duplicate_submits == 0, cluster.sim.stats(KEY)["duplicates"]
    assert report.done + report.failed == total, report.states
    assert report.uncertain >= 1, "a POST was in flight at the kill, yet no job is uncertain"
    ended = [job for job in cluster.jobs(ids).values() if job is not None]
    assert all(job.uncertain for job in ended if job.state is State.FAILED), report.failures
    assert cluster.rt.store.batch_counts(case)["uncertain"] == report.uncertain


def test_a_worker_killed_during_polls_has_every_job_polled_again_and_done(
    fault_cluster: Callable[..., FaultCluster],
) -> None:
    # Given one worker tree and 20 jobs of a 3 s model, all submitted (the cap is 24)
    started = time.monotonic()
    cap, total = 24, 20
    cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(cap))
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 150.0}})
    first = cluster.start_worker(threads=8, save_threads=2)
    case = "kill-mid-poll"
    ids = cluster.enqueue_case(case, total)
    assert wait_until(lambda: cluster.states(ids)["submitted"] == total, timeout_s=30), (
        f"{cluster.states(ids)}\n{cluster.log_tail()}"
    )
    # When polls answer slowly, and the tree is SIGKILLed while several are in flight
    cluster.sim.configure(slow_rate=1.0, slow_delay_s=1.0)
    assert wait_until(
        lambda: cluster.sim.stats()["counters"].get("fault_slow", 0) >= 3, timeout_s=10
    ), cluster.log_tail()
    cluster.kill_worker(first)
    states_at_kill = dict(cluster.states(ids))
    # And a new tree starts against a fast BFL
    cluster.sim.configure(slow_rate=0.0)
    cluster.start_worker(threads=8, save_threads=2)
    cluster.wait_all_terminal(ids, timeout_s=60)
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults=f"SIGKILL of the worker tree with polls in flight (states {states_at_kill})",
        started_at=started,
        sweep=sweep_actions(cluster),
    )
    # Then the sweep polled every orphaned job again: all are done, each submitted once
    assert_common(report, cluster)
    assert report.done == total, report.failures
    assert report.duplicate_submits == 0
    assert report.submits == total
    assert report.uncertain == 0


def test_a_job_whose_polls_stalled_past_the_poll_deadline_is_asked_once_more_before_it_fails(
    fault_cluster: Callable[..., FaultCluster],
) -> None:
    # Given 6 jobs of a 2 s model, all submitted, and a poll deadline of 5 s
    # (FLUXQ_POLL_DEADLINE_S: "a job still Pending after it fails as timed out", README)
    started = time.monotonic()
    cap, total = 24, 6
    cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(cap), FLUXQ_POLL_DEADLINE_S="5")
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 100.0}})
    first = cluster.start_worker(threads=8, save_threads=2)
    case = "stalled-polls"
    ids = cluster.enqueue_case(case, total)
    assert wait_until(lambda: cluster.states(ids)["submitted"] == total, timeout_s=30), (
        f"{cluster.states(ids)}\n{cluster.log_tail()}"
    )
    # When the tree is SIGKILLed while they are pending, and a new tree takes over only after
    # the lease lapsed (8 s): by then every task has been Ready at BFL for seconds
    cluster.kill_worker(first)
    polls_at_kill = cluster.sim.stats(KEY)["polls"]
    cluster.start_worker(threads=8, save_threads=2)
    cluster.wait_all_terminal(ids, timeout_s=60)
    polls_after = cluster.sim.stats(KEY)["polls"] - polls_at_kill
    report = judge(
        cluster,
        case=case,
        job_ids=ids,
        cap=cap,
        faults="SIGKILL of the worker tree with jobs pending; recovery outlasted the deadline",
        started_at=started,
        polls_after_recovery=polls_after,
        failure_reasons=sorted(set(report_reasons(cluster, ids))),
        sweep=sweep_actions(cluster),
    )
    # Then BFL is asked before any job is declared "still Pending": every Ready task is saved
    assert_common(report, cluster)
    assert report.duplicate_submits == 0
    assert report.done == total, report.failures


def report_reasons(cluster: FaultCluster, ids: list[str]) -> list[str]:
    return [job.reason or "" for job in cluster.jobs(ids).values() if job and job.reason]


@pytest.mark.parametrize(
    "save_threads",
    [1, 0],
    ids=["a-save-process-fed-by-the-save-queue", "saves-in-the-polling-process"],
)
def test_a_worker_killed_during_saves_has_every_image_saved_whole_and_no_orphan_file(
    fault_sim: SimulatorServer, fault_cluster: Callable[..., FaultCluster], save_threads: int
) -> None:
    # Given downloads that trickle in (about 0.3 s per image through a slow loopback relay),
    # one worker tree that saves in a save process of one thread (fed by the key's save queue),
    # or in the polling process's own threads (the default tree), and 16 jobs ready at one time
    started = time.monotonic()
    cap, total = 24, 16
    with slow_delivery(fault_sim) as proxy:
        cluster = fault_cluster(FLUXQ_ACTIVE_CAP=str(cap))
        cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 25.0}})
        first = cluster.start_worker(threads=8, save_threads=save_threads)
        case = "kill-mid-save" if save_threads else "kill-mid-inline-save"
        big = {"width": 1440, "height": 1440, "output_format": "png"}
        ids = [
            enqueue(
                cluster.rt, "flux-dev", request_for(case, i, **big), batch=case, name=f"img-{i:02d}"
            )
            for i in range(total)
        ]
        batch_dir = Path(cluster.env["FLUXQ_OUTPUT_DIR"]) / case
        assert wait_until(lambda: cluster.states(ids)["ready"] >= 3, timeout_s=30), (
            f"{cluster.states(ids)}\n{cluster.log_tail()}"
        )
        # When the tree is SIGKILLed the moment a save's temporary file exists (or after 10 s)
        targets = [*children_of(first.pid), first.pid]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not parts(batch_dir):
            time.sleep(0.005)
        cluster.kill_worker(first, targets)
        states_at_kill = dict(cluster.states(ids))
        parts_at_kill = parts(batch_dir)
        # And a new tree starts
        cluster.start_worker(threads=8, save_threads=4)
        cluster.wait_all_terminal(ids, timeout_s=60)
        report = judge(
            cluster,
            case=case,
            job_ids=ids,
            cap=cap,
            faults=(
                f"SIGKILL of the worker tree mid-save (states {states_at_kill}, "
                f"{len(parts_at_kill)} .part files at the kill); downloads trickled "
                f"({proxy.chunk} B per {proxy.delay_s} s)"
            ),
            started_at=started,
            part_files_at_kill=len(parts_at_kill),
            sweep=sweep_actions(cluster),
        )
    # Then every image is saved whole (sha256 = sidecar), nothing is left over, none doubled
    assert states_at_kill.get("ready", 0) >= 1, f"the kill hit no save: {states_at_kill}"
    assert report.done == total, report.failures
    assert report.duplicate_submits == 0
    assert_common(report, cluster)


def parts(directory: Path) -> list[str]:
    """Names of the temporary ``.part`` files in ``directory``."""
    try:
        return sorted(name for name in os.listdir(directory) if name.endswith(".part"))
    except FileNotFoundError:
        return []
