"""The poller: due jobs claimed from the key's poll queue, polled on threads, put back or out.

Real task logic, a real Redis, the simulator over loopback; the InlineDispatcher runs the
submits and records the saves, and a real ``Poller`` thread does the polling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from fluxq.tasks import poll as poll_module
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.poll import Polled, Poller
from fluxq.testing import POLL, SUBMIT
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import State
from fluxq.workers.state.poll_queue import PollQueue
from tests.support.net import wait_until
from tests.support.pipeline import Pipeline


@contextmanager
def running(poller: Poller) -> Iterator[Poller]:
    poller.start()
    try:
        yield poller
    finally:
        poller.stop()


def submitted(pipeline: Pipeline, count: int, *, seconds: float) -> list[str]:
    """``count`` jobs POSTed (the inline dispatcher runs the submits), each waiting for its
    first poll in the poll queue instead of the dispatcher's heap."""
    pipeline.sim.configure(latency={"default": {"kind": "fixed", "seconds": seconds}})
    ids = [
        enqueue(pipeline.rt, "flux-dev", {"prompt": f"poller {i}", "seed": i}, batch="polled")
        for i in range(count)
    ]
    while any(due.kind == SUBMIT for due in pipeline.dispatch.heap):
        pipeline.step()
    for due in pipeline.dispatch.heap:
        assert due.kind == POLL
        pipeline.rt.polls.add(due.job_id, due_s=time.time())
    pipeline.dispatch.heap.clear()
    return ids


def states(pipeline: Pipeline, ids: list[str]) -> list[State]:
    return [pipeline.job(job_id).state for job_id in ids]


def test_a_claim_takes_due_jobs_up_to_the_limit_and_hides_them_until_the_claim_ends(
    pipeline: Pipeline,
) -> None:
    queue = PollQueue(pipeline.rt.redis, pipeline.rt.label)
    for i in range(5):
        queue.add(f"due-{i}", due_s=100.0 + i)
    queue.add("later", due_s=200.0)
    # When a poller claims up to 3 at t = 150
    claim = queue.claim(now_s=150.0, limit=3, claim_s=30.0)
    # Then it takes the 3 earliest due, each now due at the claim's end
    assert claim.job_ids == ["due-0", "due-1", "due-2"]
    assert [queue.due_s(f"due-{i}") for i in range(3)] == [180.0, 180.0, 180.0]
    # And a second claim takes the rest that is due, then none, and says when the next is due
    assert queue.claim(now_s=150.0, limit=10, claim_s=30.0).job_ids == ["due-3", "due-4"]
    empty = queue.claim(now_s=150.0, limit=10, claim_s=30.0)
    assert (empty.job_ids, empty.next_due_s) == ([], 180.0)
    # And when the claims end unfinished (their poller died), the jobs are claimed again
    assert queue.claim(now_s=181.0, limit=10, claim_s=30.0).job_ids == [
        "due-0", "due-1", "due-2", "due-3", "due-4",
    ]  # fmt: skip
    assert queue.size() == 6


def test_the_poller_polls_every_job_to_ready_and_leaves_the_queue_empty(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given 12 submitted jobs of a 0.3 s model waiting in the poll queue
    pipeline = make_pipeline(poll_prior_median_s=0.3)
    ids = submitted(pipeline, 12, seconds=30.0)  # x time_scale 0.01
    # When a poller with 4 threads runs
    with running(Poller(pipeline.rt, threads=4)):
        done = wait_until(lambda: set(states(pipeline, ids)) == {State.READY}, timeout_s=20)
    # Then every job is ready, with its save sent, and waits for no poll
    assert done, states(pipeline, ids)
    assert sorted(pipeline.dispatch.kinds(i)[-1] for i in ids) == ["save"] * 12
    assert pipeline.rt.polls.size() == 0
    # And no job was polled more than its own polls (each poll renews its lease once)
    stats = pipeline.stats()
    assert stats["polls"] >= 12
    assert sum(pipeline.job(i).poll_attempts for i in ids) == stats["polls"]


def test_a_poll_that_raises_leaves_the_job_to_be_polled_again_when_its_claim_ends(
    make_pipeline: Callable[..., Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job waiting for its poll, and a poll that fails once with a bug
    pipeline = make_pipeline(
        http_connect_timeout_s=0.1, http_pool_timeout_s=0.1, http_read_timeout_s=0.3
    )
    (job_id,) = submitted(pipeline, 1, seconds=1.0)
    real = poll_module.poll_once
    calls: list[float] = []

    def fails_once(rt: Runtime, jid: str) -> Polled:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a bug in the first poll")
        return real(rt, jid)

    monkeypatch.setattr(poll_module, "poll_once", fails_once)
    # When the poller runs
    with running(Poller(pipeline.rt, threads=2)):
        ready = wait_until(lambda: pipeline.job(job_id).state is State.READY, timeout_s=10)
    # Then the job was polled again after its claim (connect + pool + read: 0.5 s) and is ready
    assert ready, pipeline.job(job_id)
    assert len(calls) >= 2
    assert calls[1] - calls[0] >= 0.45
