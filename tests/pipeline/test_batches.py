"""Batch lanes against a real Redis and the simulator: admitted in order, once per line, within a
budget, sharing the cap with jobs sent one by one, cancelled and retried."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fluxq.client import _enqueue_many
from fluxq.config.catalog import estimate_credits, request_to_json, validate_request
from fluxq.config.errors import InvalidRequest
from fluxq.tasks import batches, lifecycle
from fluxq.tasks.batchfile import Entry
from fluxq.tasks.enqueue import enqueue, enqueue_message, refuse_message
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline

CAP = 3


def entry(i: int, *, prompt: str | None = None, endpoint: str = "flux-dev") -> Entry:
    model = validate_request(endpoint, {"prompt": prompt or f"line {i}", "seed": i})
    request_json = json.dumps(request_to_json(model), separators=(",", ":"))
    return Entry(i, f"l{i}", f"img-{i}", endpoint, estimate_credits(endpoint, model), request_json)


def capped(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    pipeline = make_pipeline(active_cap=CAP)
    pipeline.sim.configure(active_cap=CAP)
    return pipeline


def test_lines_wait_without_records_and_run_once_each(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    result = batches.enqueue_entries(rt, "night", (entry(i) for i in range(20)))
    assert (result.added, result.present, result.conflicts) == (20, 0, [])
    # Only the admitted ones have a record; the rest are compact lane entries
    assert rt.redis.llen(keys.lane(rt.label, keys.DEFAULT_GROUP, "night")) == 20 - CAP
    assert rt.store.get("night.l19") is None
    again = batches.enqueue_entries(rt, "night", (entry(i) for i in range(25)))
    assert (again.added, again.present) == (5, 20)  # a re-run adds only what is missing
    pipeline.drain(timeout_s=60)
    status = batches.batch_status(rt, "night")
    assert status is not None
    assert status.counts["done"] == 25
    assert status.total == 25
    assert status.finished
    assert status.spent == 25 * 2.5
    assert status.committed == 0
    stats = pipeline.stats()
    assert stats["submits"] == 25
    assert stats["duplicate_submits"] == 0
    assert stats["max_active"] <= CAP
    job = rt.store.get("night.l7")
    assert job is not None
    assert job.path is not None
    assert job.path.endswith("img-7.jpeg")
    rows = list(batches.report_rows(rt, "night"))
    assert len(rows) == 25
    assert {row.state for row in rows} == {"done"}


def test_a_name_held_by_another_line_is_a_conflict_and_changes_nothing(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    rt = capped(make_pipeline).rt
    batches.enqueue_entries(rt, "names", [entry(1)])
    other = Entry(2, "l2", "img-1", "flux-dev", 2.5, entry(2).request_json)  # same file name
    result = batches.enqueue_entries(rt, "names", [other])
    assert result.added == 0
    assert result.conflicts == [other]
    assert rt.store.batch_counts("names")["total"] == 1


def test_a_job_sent_one_by_one_overtakes_a_waiting_batch_at_the_next_release(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a 10,000-line batch filling the cap
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    batches.enqueue_entries(rt, "big", (entry(i) for i in range(10_000)))
    service = enqueue(rt, "flux-dev", {"prompt": "a service's image"}, batch="svc")
    lanes = keys.lane(rt.label, keys.DEFAULT_GROUP, "big")
    assert rt.redis.llen(lanes) == 10_000 - CAP
    # When slots free up, the service job takes the first one: no batch line goes before it
    while pipeline.job(service).state is State.QUEUED:
        pipeline.step()
    assert rt.redis.llen(lanes) == 10_000 - CAP
    assert rt.store.batch_counts("big")["queued"] == 10_000 - CAP
    batches.cancel_batch(rt, "big")
    pipeline.drain(timeout_s=30)
    assert pipeline.job(service).state is State.DONE


def test_batches_keep_their_share_under_a_stream_of_service_jobs(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a cap of 8, so the lanes' share is 2 slots, and more service jobs than slots
    pipeline = make_pipeline(active_cap=8)
    pipeline.sim.configure(active_cap=8)
    rt = pipeline.rt
    batches.enqueue_entries(rt, "steady", (entry(i) for i in range(30)))
    for i in range(60):
        enqueue(rt, "flux-dev", {"prompt": f"service {i}"}, batch="svc")
    lane_held: list[int] = []
    for _ in range(400):
        if not pipeline.step():
            break
        if rt.store.batch_counts("svc")["queued"] > 0:
            lane_held.append(int(rt.redis.scard(keys.lane_slots(rt.label))))
    # While services still waited, batch jobs always held their share (2) once running
    assert lane_held
    assert min(lane_held[5:]) >= 2
    batches.cancel_batch(rt, "steady")
    pipeline.drain(timeout_s=60)


def test_a_budget_pauses_the_batch_and_resume_goes_on(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    batches.enqueue_entries(rt, "cheap", (entry(i) for i in range(10)), budget=4 * 2.5)
    pipeline.drain(timeout_s=60)
    status = batches.batch_status(rt, "cheap")
    assert status is not None
    assert status.paused == "budget"
    assert status.counts["done"] == 4
    assert status.counts["queued"] == 6
    assert status.spent <= 10.0
    assert status.counts["failed"] == 0
    batches.resume_batch(rt, "cheap", more_budget=6 * 2.5)
    pipeline.drain(timeout_s=60)
    status = batches.batch_status(rt, "cheap")
    assert status is not None
    assert status.counts["done"] == 10
    assert status.paused is None


def test_cancel_takes_every_waiting_line_at_once_and_twice_is_nothing(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    batches.enqueue_entries(rt, "gone", (entry(i) for i in range(50)))
    first = batches.cancel_batch(rt, "gone")
    assert first.lines == 50 - CAP
    assert batches.cancel_batch(rt, "gone") == batches.CancelResult(0, 0)
    pipeline.drain(timeout_s=30)
    counts = rt.store.batch_counts("gone")
    assert counts["cancelled"] == 50 - CAP
    assert counts["done"] == CAP
    assert pipeline.stats()["submits"] == CAP


def test_retry_runs_failed_lines_again_as_fresh_lines(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    bad = [entry(i, prompt=f"line {i} [error]") for i in range(3)]
    batches.enqueue_entries(rt, "flaky", [*bad, *(entry(i) for i in range(3, 6))])
    pipeline.drain(timeout_s=60)
    status = batches.batch_status(rt, "flaky")
    assert status is not None
    assert status.counts["failed"] == 3
    assert sum(status.reasons.values()) == 3
    pipeline.sim.configure(error_regex=None)  # BFL recovered
    assert batches.retry_batch(rt, "flaky", reason="generation failed") == 3
    pipeline.drain(timeout_s=60)
    status = batches.batch_status(rt, "flaky")
    assert status is not None
    assert status.counts["done"] == 6
    assert status.counts["failed"] == 0
    assert status.reasons == {}
    assert status.total == 6


def test_cancel_job_before_it_is_sent_only(make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    ids = [enqueue(rt, "flux-dev", {"prompt": f"c {i}"}) for i in range(CAP + 1)]
    assert batches.cancel_job(rt, ids[-1]) is State.CANCELLED  # still queued
    assert batches.cancel_job(rt, "no-such-job") is None
    pipeline.drain(timeout_s=30)
    assert batches.cancel_job(rt, ids[0]) is State.DONE  # already ran: nothing to cancel


def test_a_refused_message_becomes_a_failed_job_naming_the_fields(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    rt = capped(make_pipeline).rt
    message = {"endpoint": "flux-dev", "request": {"prompt": 7, "widht": 1}, "batch": "svc"}
    with pytest.raises(InvalidRequest) as refused:
        enqueue_message(rt, message, message_id="task-123")
    assert refuse_message(rt, message, refused.value, message_id="task-123") == "task-123"
    job = rt.store.get("task-123")
    assert job is not None
    assert job.state is State.FAILED
    assert job.batch == "svc"
    assert job.reason is not None
    assert "prompt" in job.reason
    assert "widht" in job.reason
    assert rt.store.batch_counts("svc")["failed"] == 1


def test_enqueue_many_validates_everything_first_then_adds_once(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    good = [{"prompt": f"many {i}", "seed": i} for i in range(30)]
    bad = [*good[:5], {"prompt": 3}, {"prompt": "x", "widht": 2}, {"prompt": "y", "seed": {1}}]
    with pytest.raises(InvalidRequest) as refused:
        _enqueue_many(rt, "flux-dev", bad, "many", 2, None)
    assert "[8]" in str(refused.value)  # a value JSON cannot hold, named by position
    assert rt.store.batch_record("many") == {}
    with pytest.raises(InvalidRequest) as refused:
        _enqueue_many(rt, "flux-dev", bad[:7], "many", 2, None)
    assert refused.value.fields == ("[6].prompt", "[7].widht")
    assert rt.store.batch_record("many") == {}  # nothing enqueued
    # A lone surrogate (a careless export) is named by position and field, not a crash
    with pytest.raises(InvalidRequest) as refused:
        _enqueue_many(rt, "flux-dev", [*good[:2], {"prompt": "a heron \ud800"}], "many", 2, None)
    assert refused.value.fields == ("[3].prompt",)
    assert rt.store.batch_record("many") == {}
    first = _enqueue_many(rt, "flux-dev", good, "many", 2, None)
    again = _enqueue_many(rt, "flux-dev", good, "many", 2, None)
    assert (first.added, again.added, again.present) == (30, 0, 30)
    pipeline.drain(timeout_s=60)
    assert rt.store.batch_counts("many")["done"] == 30


def test_a_refused_end_frees_no_slot(make_pipeline: Callable[..., Pipeline]) -> None:
    # An admitted job may be in its POST: the table refuses admitted -> cancelled, and the slot
    # must stay held, or one more job than the cap could run
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    job_id = enqueue(rt, "flux-dev", {"prompt": "admitted"})
    job = pipeline.job(job_id)
    assert job.state is State.ADMITTED
    assert not lifecycle.end(rt, job, State.CANCELLED, reason="try")
    assert rt.limiter.held() == 1
    assert batches.cancel_job(rt, job_id) is State.ADMITTED
    assert rt.limiter.held() == 1
    pipeline.drain(timeout_s=30)
    assert pipeline.job(job_id).state is State.DONE


def test_forget_drops_a_finished_batchs_bookkeeping_only_when_finished(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = capped(make_pipeline)
    rt = pipeline.rt
    batches.enqueue_entries(rt, "old", (entry(i) for i in range(6)))
    with pytest.raises(batches.BatchBusy):
        batches.forget_batch(rt, "old")  # still running
    pipeline.drain(timeout_s=60)
    assert batches.forget_batch(rt, "old") == 6
    assert rt.store.batch_record("old") == {}
    assert rt.redis.exists(keys.names("old"), keys.reasons("old")) == 0
    assert "old" not in rt.store.batches()
    assert batches.forget_batch(rt, "old") == 0  # twice is nothing
    # Submitted again while the done jobs' records live: the lines are skipped, none is paid twice
    batches.enqueue_entries(rt, "old", (entry(i) for i in range(6)))
    pipeline.drain(timeout_s=30)
    assert pipeline.stats()["submits"] == 6
    counts = rt.store.batch_counts("old")
    assert counts["queued"] == 0
    assert counts["total"] == 0
