"""Saves run by the worker process whose poller saw the Ready (``fluxq.tasks.inline_save``): the
real save against the simulator's delivery URLs, with the Pipeline's recording dispatcher
standing for Celery (what ``InlineSaves`` hands over lands there)."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fluxq.tasks import inline_save
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.inline_save import COUNTER, InlineSaves, SaveConsumer
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import State
from fluxq.workers.state.save_queue import SaveQueue
from tests.support.pipeline import Pipeline


@pytest.fixture
def saves(pipeline: Pipeline) -> Iterator[InlineSaves]:
    installed = InlineSaves.install(pipeline.rt)
    yield installed
    installed.close()


def _ready(pipeline: Pipeline, count: int) -> list[str]:
    """``count`` jobs run through submit and polls until their saves are taken."""
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"heron {i}"}) for i in range(count)]
    pipeline.drain()
    return ids


def test_a_ready_seen_here_is_saved_here_with_no_celery_message(
    pipeline: Pipeline, saves: InlineSaves
) -> None:
    ids = _ready(pipeline, 6)
    saves.close()  # returns once every save taken has ended
    for job_id in ids:
        job = pipeline.job(job_id)
        assert job.state is State.DONE
        assert job.path is not None
        assert Path(job.path).is_file()
        assert Path(job.path).with_suffix(".json").is_file()
        assert pipeline.dispatch.kinds(job_id)[:1] == ["submit"]
        assert "save" not in pipeline.dispatch.kinds(job_id)
    assert pipeline.rt.limiter.counters()[COUNTER] == 6
    # Nothing is left for the sweep to resend
    assert pipeline.rt.store.saves_due(pipeline.rt.label, now_s=pipeline.rt.clock() + 3600) == []


class Gate:
    """Holds every inline save until opened, then runs ``then`` (the real save unless set): the
    test drains the pipeline first, so what a save hands over lands in an idle dispatcher."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.then: Callable[[Runtime, str], float | None] = inline_save.save_job

    def __call__(self, rt: Runtime, job_id: str) -> float | None:
        assert self.open.wait(10), "the test never opened the gate"
        return self.then(rt, job_id)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate()
    monkeypatch.setattr(inline_save, "save_job", held)
    yield held
    held.open.set()


def test_a_failed_download_goes_to_the_workers_with_its_backoff(
    pipeline: Pipeline, gate: Gate
) -> None:
    pipeline.sim.configure(download_403_rate=1.0)  # the delivery host's bad minute
    saves = InlineSaves.install(pipeline.rt)
    [job_id] = _ready(pipeline, 1)
    gate.open.set()
    saves.close()
    # The save ran here once, failed, and its retry went to Celery, due after its backoff
    assert pipeline.dispatch.kinds(job_id)[-1] == "save"
    assert [due.kind for due in pipeline.dispatch.heap] == ["save"]
    job = pipeline.job(job_id)
    assert job.state is State.READY
    assert job.download_attempts == 1
    assert COUNTER not in pipeline.rt.limiter.counters()
    pipeline.sim.configure(download_403_rate=0.0)
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE


def test_with_every_thread_busy_a_save_goes_to_the_workers(pipeline: Pipeline, gate: Gate) -> None:
    saves = InlineSaves.install(pipeline.rt, threads=1)
    first, second = _ready(pipeline, 2)
    # One save holds the only thread; the other was sent to Celery and ran there (drain)
    kinds = {job_id: pipeline.dispatch.kinds(job_id) for job_id in (first, second)}
    assert sorted("save" in each for each in kinds.values()) == [False, True]
    gate.open.set()
    saves.close()
    assert {pipeline.job(first).state, pipeline.job(second).state} == {State.DONE}
    assert pipeline.rt.limiter.counters()[COUNTER] == 1


def test_an_error_that_is_not_the_saves_verdict_hands_the_job_to_the_workers(
    pipeline: Pipeline, gate: Gate
) -> None:
    def broken(rt: Runtime, job_id: str) -> float | None:
        raise RuntimeError("a bug")

    gate.then = broken
    saves = InlineSaves.install(pipeline.rt)
    [job_id] = _ready(pipeline, 1)
    gate.open.set()
    saves.close()
    assert pipeline.dispatch.kinds(job_id)[-1] == "save"
    assert pipeline.job(job_id).state is State.READY
    pipeline.drain()  # the workers' save (the real one) ends it
    assert pipeline.job(job_id).state is State.DONE


def _ready_unsaved(pipeline: Pipeline, count: int) -> list[str]:
    """``count`` jobs run to Ready, their saves lost (as with a producer that only queued them)."""
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"egret {i}"}) for i in range(count)]
    deadline = time.monotonic() + 20
    while any(pipeline.job(job_id).state is not State.READY for job_id in ids):
        assert time.monotonic() < deadline, "jobs never became ready"
        heap = pipeline.dispatch.heap
        heap[:] = [due for due in heap if due.kind != "save"]  # the saves are lost
        heapq.heapify(heap)
        pipeline.step()
    return ids


@contextmanager
def consuming(consumer: SaveConsumer) -> Iterator[SaveConsumer]:
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop()


def test_saves_in_the_save_queue_are_taken_and_run_while_a_thread_is_free(
    pipeline: Pipeline,
) -> None:
    ids = _ready_unsaved(pipeline, 5)
    queue = SaveQueue(pipeline.rt.redis, pipeline.rt.label)
    for job_id in ids:
        queue.push(job_id)
    saves = InlineSaves.install(pipeline.rt, threads=2)
    with consuming(SaveConsumer(pipeline.rt, saves, queue, wait_s=0.2)):
        deadline = time.monotonic() + 20
        while any(pipeline.job(job_id).state is not State.DONE for job_id in ids):
            assert time.monotonic() < deadline, "saves from the queue never ran"
            time.sleep(0.05)
    saves.close()
    assert queue.size() == 0
    assert pipeline.rt.limiter.counters()[COUNTER] == 5
    # A duplicate of a done job's save is taken and dropped: no second download
    downloads = pipeline.job(ids[0]).download_attempts
    queue.push(ids[0])
    saves = InlineSaves.install(pipeline.rt)
    with consuming(SaveConsumer(pipeline.rt, saves, queue, wait_s=0.2)):
        deadline = time.monotonic() + 10
        while queue.size():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    saves.close()
    assert pipeline.job(ids[0]).download_attempts == downloads
    assert pipeline.rt.limiter.counters()[COUNTER] == 5


def test_with_every_save_thread_busy_the_consumer_leaves_the_queue_to_others(
    pipeline: Pipeline, gate: Gate
) -> None:
    first, second = _ready_unsaved(pipeline, 2)
    queue = SaveQueue(pipeline.rt.redis, pipeline.rt.label)
    queue.push(first)
    queue.push(second)
    saves = InlineSaves.install(pipeline.rt, threads=1)
    with consuming(SaveConsumer(pipeline.rt, saves, queue, wait_s=0.2)):
        deadline = time.monotonic() + 10
        while queue.size() == 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.6)  # three of the consumer's waits: it takes nothing while its thread is held
        assert queue.size() == 1
        gate.open.set()
        while queue.size():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    saves.close()
    assert {pipeline.job(first).state, pipeline.job(second).state} == {State.DONE}
