"""Every submit outcome, driven through the real task logic against the simulator and real Redis.

Each test asserts the job's final state and what the simulator saw (its counters, not ours).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from fluxq.config.errors import InvalidRequest
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.submit import submit_job
from fluxq.tasks.sweep import sweep
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import NewJob, State
from fluxq.workers.state.limiter import PauseKind
from fluxq.workers.state.store import ReplicaShortfall
from tests.support.env import KEY
from tests.support.pipeline import Pipeline


def answer_submits_with(
    pipeline: Pipeline, status: int, headers: Mapping[str, str] | None = None
) -> None:
    """Every POST is answered ``status`` (what the simulator has no knob for); GETs go through."""
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(status, json={"detail": "busy"}, headers=headers)
        return real.handle_request(request)

    pipeline.rt.bfl.close()
    pipeline.rt.bfl = BFLClient(pipeline.rt.settings, transport=httpx.MockTransport(handler))


def test_a_job_flows_from_enqueue_to_a_saved_image_with_a_matching_sidecar(
    pipeline: Pipeline,
) -> None:
    # Given a valid request
    job_id = enqueue(
        pipeline.rt,
        "flux-pro-1.1",
        {"prompt": "a red fox", "seed": 7, "width": 512, "height": 384},
        batch="b1",
        name="fox",
    )
    # When the pipeline runs to the end
    pipeline.drain()
    # Then the job is done and the file is a complete image matching its recorded sha256
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    image = Path(job.path or "")
    assert image.name == "fox.jpeg"
    assert image.parent.name == "b1"
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert hashlib.sha256(image.read_bytes()).hexdigest() == sidecar["sha256"] == job.sha256
    with Image.open(image) as img:
        assert img.format == "JPEG"
        assert img.size == (512, 384)
    assert sidecar["seed"] == 7
    assert sidecar["bfl_id"] == job.bfl_id
    assert sidecar["cost_credits"] == 4.0
    assert set(sidecar["times"]) >= {"queued", "admitted", "submitted", "ready", "done"}
    manifest = (image.parent / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["job_id"] for line in manifest] == [job_id]
    # And the simulator saw one submit, polls on the polling host only, one download
    stats = pipeline.stats()
    assert stats["submits"] == 1
    assert stats["duplicate_submits"] == 0
    assert stats["polls"] >= 1
    assert stats["polls_wrong_host"] == 0
    assert stats["downloads"] == 1
    assert pipeline.rt.limiter.held() == 0
    assert pipeline.rt.store.batch_counts("b1")["done"] == 1


def test_an_invalid_request_is_refused_at_enqueue_naming_every_field_and_nothing_is_sent(
    pipeline: Pipeline,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        enqueue(pipeline.rt, "flux-pro-1.1", {"prompt": "x", "width": 1000, "steps": 3})
    assert set(caught.value.fields) >= {"width", "steps"}
    assert pipeline.stats()["submits"] == 0
    assert pipeline.dispatch.sent == []


def test_a_webhook_secret_in_the_request_is_refused_so_it_never_reaches_redis(
    pipeline: Pipeline,
) -> None:
    with pytest.raises(InvalidRequest, match="webhook_secret"):
        enqueue(pipeline.rt, "flux-dev", {"prompt": "x", "webhook_secret": "s3cret"})
    # Nothing was recorded or sent: the secret has no way into Redis or a task message
    assert list(pipeline.rt.redis.scan_iter("fluxq:job:*")) == []
    assert pipeline.dispatch.sent == []


def test_enqueueing_the_same_job_id_twice_creates_one_job_and_one_submit(
    pipeline: Pipeline,
) -> None:
    first = enqueue(pipeline.rt, "flux-dev", {"prompt": "once", "seed": 1}, job_id="same-id")
    second = enqueue(pipeline.rt, "flux-dev", {"prompt": "once", "seed": 1}, job_id="same-id")
    pipeline.drain()
    assert first == second == "same-id"
    assert pipeline.job("same-id").state is State.DONE
    assert pipeline.stats()["submits"] == 1


def test_a_429_despite_a_free_slot_requeues_the_job_at_the_head_and_lowers_the_cap(
    pipeline: Pipeline,
) -> None:
    # Given another client fills the key's cap (the simulator answers 429 whatever we hold)
    pipeline.sim.configure(phantom_429_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "patient", "seed": 2})
    # When the submit runs
    assert pipeline.step()
    # Then the job is queued again, holds no slot, and the effective cap dropped
    job = pipeline.job(job_id)
    assert job.state is State.QUEUED
    assert job.reason
    assert "429" in job.reason
    assert pipeline.rt.limiter.held() == 0
    assert pipeline.rt.limiter.effective_cap(now_s=pipeline.rt.clock()) < 24
    assert pipeline.stats()["phantom_429"] == 1
    # When the other client goes away and the sweep admits again
    pipeline.sim.configure(phantom_429_rate=0.0)
    sweep(pipeline.rt)
    pipeline.drain()
    # Then it completes, never failed by the 429, and no stale 429 reason is left on it
    assert pipeline.job(job_id).state is State.DONE
    assert pipeline.job(job_id).reason is None
    stats = pipeline.stats()
    assert stats["submits"] == 1  # accepted tasks: the 429 created none
    assert stats["duplicate_submits"] == 0
    assert stats["credits_spent"] == 2.5


def test_out_of_credits_pauses_admission_keeps_jobs_queued_and_resumes_when_credits_return(
    pipeline: Pipeline,
) -> None:
    # Given an account with no credits
    pipeline.sim.set_credits(KEY, 0.0)
    first = enqueue(pipeline.rt, "flux-dev", {"prompt": "one"})
    pipeline.drain()
    second = enqueue(pipeline.rt, "flux-dev", {"prompt": "two"})
    pipeline.drain()
    # Then both stay queued and admission is paused, with the reason
    assert pipeline.job(first).state is State.QUEUED
    assert pipeline.job(second).state is State.QUEUED
    paused = pipeline.rt.limiter.paused(now_s=pipeline.rt.clock())
    assert paused is not None
    assert paused.kind is PauseKind.OUT_OF_CREDITS
    assert str(paused).startswith("out of credits")
    assert pipeline.stats()["payment_required_402"] == 1  # the second was never sent
    # When the sweep checks credits while still empty, nothing changes
    sweep(pipeline.rt)
    assert pipeline.rt.limiter.paused(now_s=pipeline.rt.clock()) is not None
    # When credits return and the credit check is due again
    pipeline.sim.set_credits(KEY, 100.0)
    pipeline.rt.redis.delete(keys.lock("credits-check"))
    sweep(pipeline.rt)
    pipeline.drain()
    # Then admission resumed by itself and both jobs are done
    assert pipeline.rt.limiter.paused(now_s=pipeline.rt.clock()) is None
    assert pipeline.job(first).state is State.DONE
    assert pipeline.job(second).state is State.DONE


def test_a_refused_key_pauses_admission_and_fails_nothing(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline()
    pipeline.sim.configure(allowed_keys=["some-other-key"])
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "locked out"})
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.QUEUED
    paused = pipeline.rt.limiter.paused(now_s=pipeline.rt.clock())
    assert paused is not None
    assert paused.kind is PauseKind.NOT_AUTHORISED
    assert KEY not in str(paused)
    assert pipeline.stats()["submits"] == 0


def test_a_422_from_bfl_fails_the_job_naming_the_field(pipeline: Pipeline) -> None:
    # Given a stored request that BFL rejects (as if our catalog had drifted from BFL's)
    bad = NewJob(
        job_id="drifted",
        endpoint="flux-dev",
        request_json=json.dumps({"prompt": "x", "steps": 99}),
        batch="default",
        name="drifted",
        priority=5,
        group="default",
        key_label=pipeline.rt.label,
    )
    pipeline.rt.store.enqueue(bad, now_s=pipeline.rt.clock())
    sweep(pipeline.rt)
    pipeline.drain()
    job = pipeline.job("drifted")
    assert job.state is State.FAILED
    assert job.reason is not None
    assert "steps" in job.reason
    assert pipeline.rt.limiter.held() == 0
    assert pipeline.stats()["invalid_422"] == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_server_error_on_submit_is_settled_as_uncertain_and_never_resent_by_default(
    make_pipeline: Callable[..., Pipeline], status: int
) -> None:
    # Given BFL answers the POST with a 5xx other than 503 (it may have created the task)
    pipeline = make_pipeline()
    answer_submits_with(pipeline, status)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "maybe billed"}, batch="5xx")
    pipeline.drain()
    # Then the job fails as uncertain after one POST, naming the status, and its slot is held
    # as a doubtful hold (bounded by the learned generation times, not the poll deadline)
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.uncertain
    assert job.reason is not None
    assert str(status) in job.reason
    assert job.submit_attempts == 1
    assert pipeline.rt.store.batch_counts("5xx")["uncertain"] == 1
    assert pipeline.rt.limiter.held() == 1
    doubt = pipeline.rt.limiter.doubt()
    assert doubt.count == 1
    assert doubt.last_end_s is not None
    assert doubt.last_end_s - pipeline.rt.clock() < pipeline.rt.settings.poll_deadline_s / 5


def test_a_503_on_submit_is_a_refusal_the_job_retries_and_is_sent_once_bfl_is_back(
    pipeline: Pipeline,
) -> None:
    # Given BFL answers every POST with a 503 ("temporary service capacity": nothing created)
    pipeline.sim.configure(submit_503_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "busy"}, batch="503")
    for _ in range(3):
        assert pipeline.step()
    # Then the job is never uncertain: it keeps its slot, carries no marker, and its next try
    # waits a backoff that doubles (1 s, then 2 s, then 4 s, jittered down to half)
    job = pipeline.job(job_id)
    assert job.state is State.ADMITTED
    assert not job.uncertain
    assert job.submitting_at is None
    assert pipeline.rt.limiter.held() == 1
    assert pipeline.rt.limiter.doubt().count == 0
    [due] = pipeline.dispatch.heap
    assert 2.0 - 0.1 <= due.at_s - time.monotonic() <= 4.0
    refusal = pipeline.rt.limiter.last_refusal()
    assert refusal is not None
    assert "503" in refusal.detail
    assert pipeline.rt.store.batch_counts("503")["uncertain"] == 0
    # When BFL is back, the job is sent once more and done; nothing was created before
    pipeline.sim.configure(submit_503_rate=0.0)
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE
    stats = pipeline.stats()
    assert stats["submits"] == 1  # one task created and billed, after three refusals
    assert stats["duplicate_submits"] == 0


def test_a_503_with_retry_after_is_tried_again_after_that_long(pipeline: Pipeline) -> None:
    answer_submits_with(pipeline, 503, headers={"Retry-After": "7"})
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "busy"})
    assert pipeline.step()
    [due] = pipeline.dispatch.heap
    assert 6.5 < due.at_s - time.monotonic() <= 7.0
    assert pipeline.job(job_id).state is State.ADMITTED
    # The slot's lease outlasts the wait, so the sweep does not take it back meanwhile
    [(_, expiry)] = pipeline.rt.redis.zrange(keys.slots(pipeline.rt.label), 0, -1, withscores=True)
    assert expiry - pipeline.rt.clock() > 7.0


def test_server_errors_on_submit_are_retried_with_backoff_when_the_user_allows_it(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(submit_retry_5xx=True)
    pipeline.sim.configure(submit_500_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "flaky"})
    for _ in range(2):
        assert pipeline.step()
    assert pipeline.job(job_id).state is State.ADMITTED
    assert pipeline.job(job_id).submit_attempts == 2
    pipeline.sim.configure(submit_500_rate=0.0)
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE


def test_a_submit_that_keeps_failing_fails_after_the_attempt_limit(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(submit_max_attempts=3, submit_retry_5xx=True)
    pipeline.sim.configure(submit_500_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "doomed"})
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.reason is not None
    assert "3 times" in job.reason
    assert "500" in job.reason
    assert job.submit_attempts == 3
    assert pipeline.rt.limiter.held() == 0


def test_a_lost_submit_response_marks_the_job_uncertain_and_never_resubmits(
    pipeline: Pipeline,
) -> None:
    # Given BFL creates and bills the task but the response is lost
    pipeline.sim.configure(submit_lost_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "lost", "seed": 3}, batch="u")
    pipeline.drain()
    # Then the job fails as uncertain and is counted; the simulator billed exactly one task
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.uncertain
    assert job.reason is not None
    assert job.reason.startswith("uncertain")
    assert pipeline.rt.store.batch_counts("u")["uncertain"] == 1
    stats = pipeline.stats()
    assert stats["submits"] == 1
    assert stats["lost_responses"] == 1
    assert stats["duplicate_submits"] == 0


def test_with_resubmit_allowed_an_uncertain_job_is_resubmitted_and_the_duplicate_is_visible(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(resubmit_uncertain=True)
    pipeline.sim.configure(submit_lost_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "again", "seed": 4}, batch="r")
    assert pipeline.step()
    pipeline.sim.configure(submit_lost_rate=0.0)
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    assert job.uncertain
    assert pipeline.rt.store.batch_counts("r")["uncertain"] == 1
    assert pipeline.stats()["duplicate_submits"] == 1


def test_a_crash_between_post_and_recording_is_never_resubmitted(pipeline: Pipeline) -> None:
    # Given a job whose previous submit attempt reached the POST and died (marker left behind)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "crashed"})
    pipeline.dispatch.heap.clear()
    pipeline.rt.store.update(job_id, {"submitting_at": pipeline.rt.clock()})
    # When the redelivered submit task runs
    assert submit_job(pipeline.rt, job_id) is None
    # Then it is failed as uncertain without a second POST
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.uncertain
    assert pipeline.stats()["submits"] == 0
    # And its slot stays held: BFL may be running a task for it
    assert pipeline.rt.limiter.held() == 1


def test_a_submit_marker_no_replica_holds_is_not_sent_and_waits_with_its_slot(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given workers that need one replica for a submit marker, on a Redis that has none
    pipeline = make_pipeline(redis_min_replicas=1, redis_replica_wait_ms=10)
    pipeline.rt.store.min_replicas = 0  # the producer asks for none: the job is enqueued
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "a heron", "seed": 1})
    pipeline.rt.store.min_replicas = 1
    assert pipeline.job(job_id).state is State.ADMITTED  # enqueue admits at once
    # When its submit runs
    countdown_s = submit_job(pipeline.rt, job_id)
    # Then nothing is sent: its marker is cleared, the wait counted, its slot kept meanwhile
    assert countdown_s is not None
    assert 0.5 <= countdown_s <= 1.5
    job = pipeline.job(job_id)
    assert (job.state, job.submitting_at) == (State.ADMITTED, None)
    assert pipeline.rt.store.count(job_id, "refused") == 1
    assert pipeline.rt.limiter.held() == 1
    assert pipeline.stats()["submits"] == 0


def test_a_submit_marker_unconfirmed_for_a_job_the_master_never_saw_sends_nothing(
    make_pipeline: Callable[..., Pipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an admitted job whose marker went to a master that is one no longer: the current
    # master has no record of the job (its admission was lost with the old one)
    pipeline = make_pipeline()
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "a heron", "seed": 2})
    assert pipeline.job(job_id).state is State.ADMITTED
    store = pipeline.rt.store
    store.min_replicas = 1

    def on_a_stale_master(job_id: str, *, now_s: float) -> tuple[int, int]:
        pipeline.rt.redis.delete(keys.job(job_id))
        return 1, 0

    monkeypatch.setattr(store, "start_submit", on_a_stale_master)
    # When its submit runs: no crash, nothing sent, nothing made for the missing job
    assert submit_job(pipeline.rt, job_id) is None
    assert pipeline.stats()["submits"] == 0
    assert not pipeline.rt.redis.exists(keys.job(job_id))


def test_an_answer_no_replica_confirmed_and_the_master_lost_is_recorded_again_not_dropped(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a submit whose answer, waited for on replicas, went to a master replaced since: the
    # replicated write raises, and the master now has no trace of it
    store = pipeline.rt.store
    real = store.transition

    def lost_on_a_replaced_master(*args: Any, replicated: bool = False, **kwargs: Any) -> bool:
        if replicated:
            raise ReplicaShortfall("job x to submitted: written, but 0 of 1 Redis replicas ...")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "transition", lost_on_a_replaced_master)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "a heron", "seed": 3})
    # When the pipeline runs: then BFL's answer is written again and the job goes on to done
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.DONE
    assert job.bfl_id is not None
    assert not job.uncertain
    assert pipeline.stats()["submits"] == 1
