"""Webhook mode through the real task logic: the simulator calls back, ``receive`` settles it.

A loopback receiver stands where ``fluxq api`` would: it records what the simulator POSTs (path,
headers, body), and each test hands that, unchanged, to ``fluxq.api_bfl_webhooks.receive``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import pytest
from pydantic import SecretStr

from fluxq.api_bfl_webhooks import Answer, receive
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.submit import SubmitCrashed, submit_job, webhook_fields
from fluxq.tasks.sweep import SAFETY_POLLED, sweep
from fluxq.workers.bfl import webhooks
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import JobField, State
from tests.pipeline.test_metrics import scrape
from tests.support.pipeline import Pipeline
from tests.support.webhooks import Received, WebhookReceiver, webhook_receiver

__all__ = ["webhook_receiver"]  # the receiver fixture, shared with the simulator's tests

SECRET = "pipeline-webhook-secret-0123456789"
REQUEST = {"prompt": "a heron at dawn", "seed": 3, "width": 256, "height": 256}


@pytest.fixture
def hooked(
    make_pipeline: Callable[..., Pipeline], webhook_receiver: WebhookReceiver
) -> tuple[Pipeline, WebhookReceiver]:
    parts = urlsplit(webhook_receiver.url)
    pipeline = make_pipeline(
        bfl_webhook_base_url=f"{parts.scheme}://{parts.netloc}",
        bfl_webhook_secret=SECRET,
        bfl_webhook_safety_poll_s=1.0,
    )
    return pipeline, webhook_receiver


def _route(received: Received) -> tuple[str, str]:
    """The job id and token of a delivery's path, as ``fluxq api``'s route reads them."""
    prefix = webhooks.WEBHOOK_PATH + "/"
    assert received.path.startswith(prefix), received.path
    job_id, token = received.path[len(prefix) :].split("/")
    return unquote(job_id), token


def _deliver(pipeline: Pipeline, received: Received, **change: object) -> Answer:
    job_id, token = _route(received)
    headers = dict(received.headers)
    headers.update({k: str(v) for k, v in change.items() if k.startswith("x-")})
    return receive(
        pipeline.rt, str(change.get("job_id", job_id)), str(change.get("token", token)),
        headers, received.body,
    )  # fmt: skip


def _submit(pipeline: Pipeline, job_id: str, request: dict[str, object] = REQUEST) -> None:
    enqueue(pipeline.rt, "flux-dev", request, job_id=job_id, batch="hooks")
    assert pipeline.step()  # the submit


def test_a_webhook_moves_the_job_to_ready_and_the_safety_poll_never_asks_bfl(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    # Given a job submitted in webhook mode
    _submit(pipeline, "heron")
    # Then no poll is scheduled: its lease is stretched to the safety net's time instead
    assert "poll" not in pipeline.dispatch.kinds("heron")
    expiry = pipeline.rt.redis.zscore(keys.slots(pipeline.rt.label), "heron")
    assert expiry is not None
    assert expiry - time.time() > 0.8
    # When BFL calls its URL with the key's secret verbatim (BFL's SDK form)
    [received] = receiver.wait_for(1)
    assert received.headers["x-webhook-secret"] == webhooks.key_secret(
        SecretStr(SECRET), pipeline.rt.label
    )
    assert _deliver(pipeline, received) is Answer.SETTLED
    # Then the job is Ready at once, its slot is free, and it is saved
    assert pipeline.job("heron").state is State.READY
    assert pipeline.rt.limiter.held() == 0
    pipeline.drain()
    assert pipeline.job("heron").state is State.DONE
    stats = pipeline.stats()
    assert (stats["submits"], stats["polls"]) == (1, 0)
    assert pipeline.rt.limiter.held() == 0
    counters = pipeline.rt.limiter.counters()
    assert (counters["bfl_webhooks"], counters["ready"]) == (1, 1)
    # And a second delivery of the same webhook (BFL retrying) is acknowledged and ignored
    assert _deliver(pipeline, received) is Answer.IGNORED
    assert pipeline.job("heron").state is State.DONE


def test_the_hmac_form_is_accepted_too(hooked: tuple[Pipeline, WebhookReceiver]) -> None:
    pipeline, receiver = hooked
    pipeline.sim.configure(webhook_auth="hmac")
    _submit(pipeline, "signed")
    [received] = receiver.wait_for(1)
    assert "x-webhook-secret" not in received.headers
    assert received.headers["x-bfl-signature"].startswith("sha256=")
    assert _deliver(pipeline, received) is Answer.SETTLED
    # A signature over another body is a forgery
    tampered = Received(received.path, received.headers, received.body.replace(b"Ready", b"Error"))
    assert _deliver(pipeline, tampered) is Answer.FORGED


def test_forged_webhooks_are_refused_and_counted_and_change_nothing(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    _submit(pipeline, "target")
    [received] = receiver.wait_for(1)
    job_id, token = _route(received)
    # A wrong token, another job's token, a wrong secret, no secret at all: each refused
    assert _deliver(pipeline, received, token="0" * len(token)) is Answer.FORGED
    other = webhooks.job_token(SecretStr(SECRET), "another-job")
    assert _deliver(pipeline, received, token=other) is Answer.FORGED
    assert _deliver(pipeline, received, **{"x-webhook-secret": "guess"}) is Answer.FORGED
    bare = Received(received.path, {"content-type": "application/json"}, received.body)
    assert _deliver(pipeline, bare) is Answer.FORGED
    assert pipeline.rt.limiter.counters()["bfl_webhooks_forged"] == 4
    assert pipeline.job(job_id).state is State.SUBMITTED
    # And the real one still works
    assert _deliver(pipeline, received) is Answer.SETTLED
    # And a Prometheus scrape says so, by outcome
    samples = scrape(pipeline)
    hooks = "fluxq_bfl_webhooks_total"
    key = ("key", pipeline.rt.label)
    assert samples[(hooks, (key, ("outcome", "forged")))] == 4
    assert samples[(hooks, (key, ("outcome", "authentic")))] == 1
    assert samples[(hooks, (key, ("outcome", "ignored")))] == 0


def test_a_webhook_for_an_unknown_job_or_another_task_is_ignored(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    _submit(pipeline, "known")
    [received] = receiver.wait_for(1)
    # An id fluxq signed but no longer knows (expired, forgotten): acknowledged, ignored
    secret = SecretStr(SECRET)
    token = webhooks.job_token(secret, "gone")
    answer = receive(pipeline.rt, "gone", token, received.headers, received.body)
    assert answer is Answer.IGNORED
    # Another task id than the job's (an earlier attempt's task): ignored, the job waits on
    body = json.loads(received.body)
    body["id"] = "not-this-task"
    raw = json.dumps(body).encode()
    job_id, token = _route(received)
    assert receive(pipeline.rt, job_id, token, received.headers, raw) is Answer.IGNORED
    assert pipeline.job("known").state is State.SUBMITTED
    # A body that is not a task: ignored (BFL stops retrying), nothing moves
    garbage = receive(pipeline.rt, job_id, token, received.headers, b"[1, 2]")
    assert garbage is Answer.IGNORED
    assert pipeline.job("known").state is State.SUBMITTED


def test_a_failed_task_fails_its_job_with_bfls_reason(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    _submit(pipeline, "broken", {**REQUEST, "prompt": "a kite [error]"})
    [received] = receiver.wait_for(1)
    assert _deliver(pipeline, received) is Answer.SETTLED
    job = pipeline.job("broken")
    assert job.state is State.FAILED
    assert (job.reason or "").startswith("Error: BFL reported that generation failed")
    assert pipeline.rt.limiter.held() == 0


def test_a_webhook_while_the_jobs_post_is_still_out_asks_for_a_retry(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    _submit(pipeline, "first")
    [received] = receiver.wait_for(1)
    # Given a job whose POST has gone out but whose answer is not recorded yet
    enqueue(pipeline.rt, "flux-dev", REQUEST | {"seed": 4}, job_id="racing", batch="hooks")
    assert pipeline.job("racing").state is State.ADMITTED
    pipeline.rt.store.update("racing", {JobField.SUBMITTING_AT: time.time()})
    # When a webhook for it arrives (its URL and the key's secret are right)
    token = webhooks.job_token(SecretStr(SECRET), "racing")
    answer = receive(pipeline.rt, "racing", token, received.headers, received.body)
    # Then BFL is asked to deliver again, and the job is untouched
    assert answer is Answer.RETRY
    assert pipeline.job("racing").state is State.ADMITTED


def test_a_lost_submit_answer_is_recovered_by_the_webhook_and_never_paid_twice(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    # Given BFL creates and bills the task, and the POST's answer is lost
    pipeline.sim.configure(submit_lost_rate=1.0)
    _submit(pipeline, "lost")
    job = pipeline.job("lost")
    assert (job.state, job.uncertain) == (State.FAILED, True)
    assert pipeline.rt.limiter.held() == 1  # an unseen task keeps its slot
    # When its webhook arrives
    [received] = receiver.wait_for(1)
    assert _deliver(pipeline, received) is Answer.RECOVERED
    # Then the job is recovered with the webhook's task id, saved, and its slot freed
    pipeline.drain()
    job = pipeline.job("lost")
    assert job.state is State.DONE
    assert job.bfl_id == json.loads(received.body)["id"]
    assert job.path is not None
    stats = pipeline.stats()
    assert (stats["submits"], stats["duplicate_submits"], stats["polls"]) == (1, 0, 0)
    assert pipeline.rt.limiter.held() == 0
    assert pipeline.rt.limiter.counters()["bfl_webhooks_recovered"] == 1


def test_a_missed_webhook_is_caught_by_the_safety_poll_after_its_time(
    hooked: tuple[Pipeline, WebhookReceiver],
) -> None:
    pipeline, receiver = hooked
    # Given a job whose webhook never reaches fluxq (the receiver drops it on the floor)
    _submit(pipeline, "missed")
    receiver.wait_for(1)
    # When the sweep runs before the safety net's time, Then it leaves the job alone
    assert sweep(pipeline.rt).get(SAFETY_POLLED, 0) == 0
    assert pipeline.job("missed").state is State.SUBMITTED
    # And after it (1 s), the sweep polls it once, BFL says Ready, and the job is saved
    time.sleep(1.1)
    assert sweep(pipeline.rt)[SAFETY_POLLED] == 1
    pipeline.drain()
    assert pipeline.job("missed").state is State.DONE
    stats = pipeline.stats()
    assert (stats["submits"], stats["polls"]) == (1, 1)
    assert pipeline.rt.limiter.held() == 0


def test_a_submit_that_crashes_never_shows_the_webhook_secret_or_the_job_token(
    hooked: tuple[Pipeline, WebhookReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given webhook mode, and a bug that quotes the whole request body in its exception
    pipeline, _ = hooked

    def crash(endpoint: str, body: dict[str, object]) -> object:
        raise TypeError(f"cannot handle {body!r}")

    monkeypatch.setattr(pipeline.rt.bfl, "submit_json", crash)
    job_id = enqueue(pipeline.rt, "flux-dev", REQUEST)
    job = pipeline.job(job_id)
    fields = webhook_fields(pipeline.rt, job)
    # When the submit runs, what Celery would log and Flower show is redacted of both secrets
    with pytest.raises(SubmitCrashed) as crashed:
        submit_job(pipeline.rt, job_id)
    text = str(crashed.value) + repr(crashed.value)
    assert fields["webhook_secret"] not in text
    token = fields["webhook_url"].rsplit("/", 1)[1]
    assert token not in text
    assert "a heron at dawn" in text  # the rest stays, to debug with
    assert crashed.value.__cause__ is None  # not chained: no traceback repeats the body
    assert crashed.value.__suppress_context__
