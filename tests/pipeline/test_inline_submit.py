"""Submits run by the process that admitted the job (``fluxq.tasks.inline_submit``; here as
``fluxq api`` runs them): the real task logic against the simulator.

The Pipeline's recording dispatcher stands for Celery: what ``InlineSubmits`` hands to the
workers lands there, and the tests run it as a worker would (``pipeline.drain``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

import pytest

from fluxq.api_bfl_webhooks import Answer, receive
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.inline_submit import COUNTER, InlineSubmits
from fluxq.workers.bfl import webhooks
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline
from tests.support.webhooks import WebhookReceiver, webhook_receiver

__all__ = ["webhook_receiver"]

SECRET = "inline-submit-webhook-secret-0123"


def _worker_seen(pipeline: Pipeline) -> None:
    """A worker process's heartbeat, as ``tasks.sweep`` writes it."""
    pipeline.rt.redis.zadd(keys.WORKERS, {"test-host:4242": time.time()})


@pytest.fixture
def inline(pipeline: Pipeline) -> Iterator[InlineSubmits]:
    installed = InlineSubmits.install(pipeline.rt)
    yield installed
    installed.close()


def test_with_a_worker_alive_the_api_posts_the_jobs_it_admits_itself(
    pipeline: Pipeline, inline: InlineSubmits
) -> None:
    _worker_seen(pipeline)
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"heron {i}"}) for i in range(8)]
    # close() returns only when every submit taken is answered and recorded
    inline.close()
    for job_id in ids:
        job = pipeline.job(job_id)
        assert job.state is State.SUBMITTED
        assert job.bfl_id
        assert job.submitting_at is None
    # Nothing went to the workers' submit queue; BFL saw one POST per job
    assert not any(kind == "submit" for kind, _ in pipeline.dispatch.sent)
    assert pipeline.stats()["submits"] == 8
    assert pipeline.rt.limiter.counters()[COUNTER] == 8
    # The rest of the job's life is the workers': the poll was sent to them, and they finish it
    assert {kind for kind, _ in pipeline.dispatch.sent} == {"poll"}
    pipeline.drain()
    assert all(pipeline.job(job_id).state is State.DONE for job_id in ids)


def test_with_no_worker_seen_nothing_is_paid_and_the_submit_waits_for_the_workers(
    pipeline: Pipeline, inline: InlineSubmits
) -> None:
    # No heartbeat at all, then one too old to count (beyond 3 sweep intervals)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "nobody home"})
    old = time.time() - 4 * pipeline.rt.settings.sweep_interval_s
    pipeline.rt.redis.zadd(keys.WORKERS, {"gone:1": old})
    second = enqueue(pipeline.rt, "flux-dev", {"prompt": "still nobody"})
    inline.close()
    assert pipeline.stats()["submits"] == 0
    assert pipeline.dispatch.kinds(job_id) == ["submit"]
    assert pipeline.dispatch.kinds(second) == ["submit"]
    assert pipeline.job(job_id).state is State.ADMITTED
    # When a worker takes them, each is submitted once
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE
    assert pipeline.stats()["submits"] == 2


def test_a_retry_after_backoff_is_handed_to_the_workers_with_its_countdown(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(submit_retry_5xx=True, retry_backoff_base_s=0.5)
    inline = InlineSubmits.install(pipeline.rt)
    _worker_seen(pipeline)
    pipeline.sim.configure(submit_500_rate=1.0)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "flaky"})
    inline.close()
    # The API's one POST drew a 500: the retry waits in the workers' queue with a countdown
    assert pipeline.dispatch.kinds(job_id) == ["submit"]
    [due] = pipeline.dispatch.heap
    assert due.at_s - time.monotonic() > 0.1
    job = pipeline.job(job_id)
    assert (job.state, job.submit_attempts, job.submitting_at) == (State.ADMITTED, 1, None)
    pipeline.sim.configure(submit_500_rate=0.0)
    pipeline.drain()
    assert pipeline.job(job_id).state is State.DONE


def test_an_error_that_is_not_bfls_answer_hands_the_job_over_and_it_is_never_paid_twice(
    pipeline: Pipeline, inline: InlineSubmits, monkeypatch: pytest.MonkeyPatch
) -> None:
    _worker_seen(pipeline)
    real_submit = pipeline.rt.bfl.submit_json

    def answer_lost_in_a_bug(endpoint: str, body: dict[str, object]) -> object:
        real_submit(endpoint, body)  # BFL created (and billed) the task...
        raise RuntimeError("a bug after the POST")  # ...and its answer never got recorded

    monkeypatch.setattr(pipeline.rt.bfl, "submit_json", answer_lost_in_a_bug)
    job_id = enqueue(pipeline.rt, "flux-dev", {"prompt": "buggy"})
    inline.close()
    monkeypatch.undo()
    # The workers got the job; their claim sees a POST that may have been sent
    assert pipeline.dispatch.kinds(job_id) == ["submit"]
    assert pipeline.job(job_id).submitting_at is not None
    pipeline.drain()
    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert job.uncertain
    assert pipeline.stats()["submits"] == 1  # never a second POST


def test_a_webhook_frees_the_slot_and_the_next_job_is_posted_from_the_same_process(
    make_pipeline: Callable[..., Pipeline], webhook_receiver: WebhookReceiver
) -> None:
    parts = urlsplit(webhook_receiver.url)
    pipeline = make_pipeline(
        bfl_webhook_base_url=f"{parts.scheme}://{parts.netloc}",
        bfl_webhook_secret=SECRET,
        active_cap=1,
    )
    inline = InlineSubmits.install(pipeline.rt)
    try:
        _worker_seen(pipeline)
        first = enqueue(pipeline.rt, "flux-dev", {"prompt": "first"})
        second = enqueue(pipeline.rt, "flux-dev", {"prompt": "second"})
        deadline = time.monotonic() + 10
        while pipeline.job(first).state is not State.SUBMITTED:
            assert time.monotonic() < deadline, "the first job was never submitted"
            time.sleep(0.01)
        assert pipeline.job(second).state is State.QUEUED  # the cap is 1
        # When BFL calls the first job back (what fluxq api's route does with the delivery)
        [received] = webhook_receiver.wait_for(1)
        job_id, token = received.path.removeprefix(webhooks.WEBHOOK_PATH + "/").split("/")
        assert unquote(job_id) == first
        answer = receive(pipeline.rt, first, token, dict(received.headers), received.body)
        assert answer is Answer.SETTLED
        inline.close()
        # Then the second job was POSTed by this process, not sent to the workers
        job = pipeline.job(second)
        assert job.state is State.SUBMITTED
        assert job.bfl_id
        assert "submit" not in pipeline.dispatch.kinds(second)
        assert pipeline.dispatch.kinds(first) == ["save"]
        assert pipeline.stats()["submits"] == 2
        assert pipeline.rt.limiter.counters()[COUNTER] == 2
    finally:
        inline.close()
