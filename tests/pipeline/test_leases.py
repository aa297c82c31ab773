"""Leases never free a slot on a guess: slow POSTs, lost workers and late answers.

Invariant 1 (the cap) and invariant 2 (one POST per job) meet here: a slot is freed only when the
task behind it is known to be over, or once a task it may have created would have ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from fluxq.tasks import lifecycle
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.poll import poll_job
from fluxq.tasks.submit import submit_job
from fluxq.tasks.sweep import sweep
from fluxq.workers.bfl.outcomes import doubt_hold_s
from fluxq.workers.poll_schedule import Schedule
from fluxq.workers.state.jobs import JobField, State
from fluxq.workers.state.lease_keeper import LeaseKeeper
from tests.support.pipeline import Pipeline

SHORT_LEASE_S = 0.3
SLOW_POST_S = 1.2


def shorten_lease(pipeline: Pipeline, *, keeper: bool) -> None:
    """Make leases lapse within a test's time: far shorter than the simulator's slow POST."""
    pipeline.rt.limiter.lease_ttl_s = SHORT_LEASE_S
    pipeline.rt.leases = LeaseKeeper(pipeline.rt.limiter, clock=time.time, lease_s=SHORT_LEASE_S)
    if not keeper:  # what main did: nothing renewed a lease while its POST was in flight

        @contextmanager
        def nothing(job_id: str, group: str) -> Iterator[None]:
            yield

        pipeline.rt.leases.holding = nothing  # type: ignore[method-assign]


@contextmanager
def sweeping(pipeline: Pipeline) -> Iterator[list[dict[str, int]]]:
    """Run the sweep every 50 ms in a thread (as another worker would) for the block."""
    stop = threading.Event()
    results: list[dict[str, int]] = []

    def loop() -> None:
        while not stop.wait(0.05):
            results.append(sweep(pipeline.rt))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield results
    finally:
        stop.set()
        thread.join(timeout=5)


def test_a_post_slower_than_the_lease_keeps_its_slot_and_its_job(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given leases far shorter than a slow POST, renewed by the lease keeper
    pipeline = make_pipeline(active_cap=1)
    shorten_lease(pipeline, keeper=True)
    pipeline.sim.configure(slow_rate=1.0, slow_delay_s=SLOW_POST_S)
    first = enqueue(pipeline.rt, "flux-dev", {"prompt": "slow one"})
    second = enqueue(pipeline.rt, "flux-dev", {"prompt": "slow two"})
    # When the POST runs while another worker sweeps
    with sweeping(pipeline) as sweeps:
        assert submit_job(pipeline.rt, first) is None
    # Then the sweep never touched it: submitted, not uncertain, and the cap of 1 held
    assert sweeps
    assert all(not s.get("uncertain") and not s.get("requeued") for s in sweeps)
    job = pipeline.job(first)
    assert job.state is State.SUBMITTED
    assert not job.uncertain
    assert pipeline.job(second).state is State.QUEUED
    assert pipeline.stats()["max_active"] == 1


def test_a_first_poll_plan_slower_than_the_lease_leaves_its_answered_post_certain(
    make_pipeline: Callable[..., Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given short renewed leases, and a poll plan that takes longer than a lease to make (a new
    # plan costs seconds of CPU on a loaded machine)
    pipeline = make_pipeline(active_cap=1)
    shorten_lease(pipeline, keeper=True)
    real = pipeline.rt.latency.schedule

    def slow_plan(endpoint: str, size: str) -> Schedule:
        time.sleep(3 * SHORT_LEASE_S)
        return real(endpoint, size)

    monkeypatch.setattr(pipeline.rt.latency, "schedule", slow_plan)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "slow plan"})
    # When the POST is answered and its first poll is planned while another worker sweeps
    with sweeping(pipeline) as sweeps:
        assert submit_job(pipeline.rt, job_id) is None
    # Then the lease was renewed until the answer was recorded: submitted, never uncertain
    assert sweeps
    assert all(not s.get("uncertain") for s in sweeps), sweeps
    job = pipeline.job(job_id)
    assert job.state is State.SUBMITTED
    assert not job.uncertain


def test_without_renewal_the_same_slow_post_would_free_no_slot_and_recover_its_late_answer(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a slow POST whose lease is not renewed (a worker cut off from Redis, say)
    pipeline = make_pipeline(active_cap=1)
    shorten_lease(pipeline, keeper=False)
    pipeline.sim.configure(slow_rate=1.0, slow_delay_s=SLOW_POST_S)
    first = enqueue(pipeline.rt, "flux-dev", {"prompt": "late answer", "seed": 7}, batch="late")
    second = enqueue(pipeline.rt, "flux-dev", {"prompt": "waits", "seed": 8}, batch="late")
    # When the sweep finds the lapsed lease during the POST
    with sweeping(pipeline) as sweeps:
        assert submit_job(pipeline.rt, first) is None
    # Then the sweep settled it as uncertain but kept its slot: the second job was not admitted
    assert any(s.get("uncertain") for s in sweeps)
    assert pipeline.job(second).state is State.QUEUED
    assert pipeline.stats()["max_active"] == 1
    # And the late answer recovered the job: it is polled and saved, and BFL billed one task
    pipeline.sim.configure(slow_rate=0.0)
    job = pipeline.job(first)
    assert job.state is State.SUBMITTED
    assert job.bfl_id
    pipeline.drain()
    done = pipeline.job(first)
    assert done.state is State.DONE
    assert done.uncertain  # counted: its outcome was unknown for a while
    # ...but no longer among the batch's failures, and its slot is no doubtful hold any more
    assert pipeline.rt.store.reasons("late") == {}
    assert pipeline.rt.limiter.doubt().count == 0
    stats = pipeline.stats()
    assert stats["duplicate_submits"] == 0


def test_a_worker_lost_mid_post_holds_the_slot_while_its_task_could_run_not_the_poll_deadline(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a cap of 1, the shipped poll deadline (900 s), and a job whose worker died during its
    # POST (marker set, lease lapsed); nothing is learned yet, so the prior's times apply
    pipeline = make_pipeline(active_cap=1, poll_deadline_s=900.0)
    lost = enqueue(pipeline.rt, "flux-dev", {"prompt": "lost worker"})
    waiting = enqueue(pipeline.rt, "flux-dev", {"prompt": "next in line"})
    pipeline.dispatch.heap.clear()
    pipeline.rt.store.update(lost, {JobField.SUBMITTING_AT: pipeline.rt.clock()})
    settings = pipeline.rt.settings
    hold_s = doubt_hold_s(
        pipeline.rt.latency.model("flux-dev", "default"),
        factor=settings.doubt_hold_factor,
        floor_s=settings.doubt_hold_floor_s,
        ceiling_s=settings.poll_deadline_s,
    )
    assert 15.0 <= hold_s < 120.0  # the prior's bound: far below the 900 s poll deadline
    real_clock = pipeline.rt.clock
    found_at = real_clock() + settings.lease_ttl_s + 1
    try:
        # When the sweep finds the lapsed lease, and again just before the hold ends
        pipeline.rt.clock = lambda: found_at
        sweep(pipeline.rt)
        failed = pipeline.job(lost)
        pipeline.rt.clock = lambda: found_at + hold_s - 1
        sweep(pipeline.rt)
        # Then the job is failed as uncertain and its slot held as a doubtful hold
        assert failed.state is State.FAILED
        assert failed.uncertain
        assert pipeline.job(waiting).state is State.QUEUED
        assert pipeline.rt.limiter.held() == 1
        doubt = pipeline.rt.limiter.doubt()
        assert doubt.count == 1
        assert doubt.last_end_s is not None
        assert abs(doubt.last_end_s - (found_at + hold_s)) < 0.5
        # And once a task it may have created would have ended, the slot goes to the next job
        pipeline.rt.clock = lambda: found_at + hold_s + 1
        sweep(pipeline.rt)
        assert pipeline.job(waiting).state is State.ADMITTED
        assert pipeline.rt.limiter.doubt().count == 0
    finally:
        pipeline.rt.clock = real_clock
    assert pipeline.stats()["submits"] == 0


def test_a_job_polled_first_after_its_deadline_is_still_fetched_when_bfl_finished_it(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a submitted job whose poll chain stalled past the poll deadline (workers were down)
    pipeline = make_pipeline(poll_deadline_s=30.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "late poll"})
    while "poll" not in pipeline.dispatch.kinds(job_id):
        assert pipeline.step()
    pipeline.dispatch.heap.clear()
    time.sleep(0.3)  # the simulator has finished it by now
    real_clock = pipeline.rt.clock
    pipeline.rt.clock = lambda: real_clock() + 60.0
    try:
        # When it is polled at last
        assert poll_job(pipeline.rt, job_id) is None
    finally:
        pipeline.rt.clock = real_clock
    # Then BFL's Ready wins over the deadline: the image is fetched, not thrown away
    assert pipeline.job(job_id).state is State.READY
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE


def test_a_ready_move_that_was_lost_keeps_the_slot_so_the_sweep_still_finds_the_job(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a submitted job holding its slot
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "a heron", "seed": 4})
    assert submit_job(pipeline.rt, job_id) is None
    job = pipeline.job(job_id)
    assert job.state is State.SUBMITTED
    assert pipeline.rt.limiter.held() == 1
    # When BFL says Ready but the move to ready is lost (a master replaced mid-sequence took it)
    monkeypatch.setattr(pipeline.rt.store, "transition", lambda *args, **kwargs: False)
    assert not lifecycle.ready(pipeline.rt, job, {})
    # Then its slot is kept with it: the lease lapses and the sweep polls the job again,
    # instead of a submitted job with no lease that nothing would ever look at
    assert pipeline.rt.limiter.held() == 1
