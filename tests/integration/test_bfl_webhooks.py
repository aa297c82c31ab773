"""Webhook mode end to end: the simulator calls a real ``fluxq api`` back, real workers save.

BFL's webhooks reach ``fluxq api`` over loopback HTTP; polls are a safety net 30 s out, so a
batch that finishes in seconds is never polled at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from fluxq.client import Client
from fluxq.workers.bfl import webhooks
from fluxq.workers.state.jobs import State
from tests.support.api import ApiServer
from tests.support.cluster import Cluster
from tests.support.env import KEY, settings_for
from tests.support.net import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "integration-webhook-secret-0123456789"
TOKEN = "integration-api-token"
SWEEP_SHARE = 0.75
"""At least this share of the refills after the first wave is fluxq api's own: a worker's sweep
may take a few before the webhook that freed them does (see below)."""


@pytest.fixture
def hooked(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> Iterator[tuple[Cluster, ApiServer]]:
    """A cluster in webhook mode, with ``fluxq api`` receiving at the base URL it names."""
    port = free_port()
    cluster = make_cluster(
        FLUXQ_BFL_WEBHOOK_BASE_URL=f"http://127.0.0.1:{port}",
        FLUXQ_BFL_WEBHOOK_SECRET=SECRET,
        FLUXQ_API_TOKEN=TOKEN,
    )
    server = ApiServer(cluster.env, tmp_path, port=port)
    try:
        server.wait_up()
        cluster.start_worker()
        yield cluster, server
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()


def _lines(count: int, tag: str) -> list[dict[str, object]]:
    return [
        {"id": f"l{i}", "prompt": f"a {tag} lantern, take {i}", "seed": i, "width": 256,
         "height": 256}
        for i in range(count)
    ]  # fmt: skip


def _enqueue(cluster: Cluster, batch: str, lines: list[dict[str, object]]) -> int:
    with Client(settings_for(cluster.env)) as client:
        return client.enqueue_many("flux-dev", lines, batch=batch).added


def test_200_jobs_finish_through_their_webhooks_with_no_poll(
    hooked: tuple[Cluster, ApiServer],
) -> None:
    cluster, server = hooked
    # Given 200 jobs in webhook mode
    assert _enqueue(cluster, "lanterns", _lines(200, "paper")) == 200
    # When they run, Then every one is saved
    counts = cluster.wait_terminal("lanterns", 200, timeout_s=90)
    assert counts.get(State.DONE.value) == 200, counts
    # And BFL was never polled: every Ready came by webhook, each task was submitted once (a
    # delivery counts once its answer is read, which may come after the job's save)
    assert wait_until(lambda: cluster.sim.stats(KEY)["webhooks_delivered"] == 200, timeout_s=10)
    stats = cluster.sim.stats(KEY)
    assert (stats["submits"], stats["duplicate_submits"], stats["polls"]) == (200, 0, 0)
    assert stats["webhooks_delivered"] == 200
    counters = cluster.rt.limiter.counters()
    # (a webhook that beat its POST's answer was answered 503 and delivered again: counted apart)
    assert (counters["bfl_webhooks"], counters["ready"]) == (200, 200)
    assert counters.get("polls", 0) == 0
    # Every save fluxq api sent went through the key's save queue to a worker's own threads
    assert counters.get("inline_saves") == 200
    assert cluster.rt.limiter.held() == 0
    # And past the first wave (sent by the producer's enqueue through Celery), the slots webhooks
    # freed were refilled by fluxq api itself, with no Celery hop. A worker's sweep (every 1 s
    # here) may take one in the moment between a webhook's release and its admission (two
    # steps in tasks.lifecycle, the webhook in a thread of fluxq api): a few on a quiet machine
    # (8 of 176 once with the suite's other tests beside it), never most.
    cap = cluster.rt.settings.active_cap
    refills = 200 - cap
    assert refills * SWEEP_SHARE <= counters.get("api_submits", 0) <= 200
    # And the metrics served by the API say so
    scrape = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).text
    assert 'fluxq_bfl_webhooks_total{key="' in scrape


def test_forged_and_stray_webhooks_get_the_right_answers_over_http(
    hooked: tuple[Cluster, ApiServer],
) -> None:
    cluster, server = hooked
    secret = SecretStr(SECRET)
    _enqueue(cluster, "strays", _lines(1, "stray"))
    cluster.wait_terminal("strays", 1, timeout_s=60)
    job_id = "strays.l0"
    job = cluster.rt.store.get(job_id)
    assert job is not None
    assert job.state is State.DONE
    url = webhooks.webhook_url(server.url, secret, job_id)
    body = json.dumps({"id": job.bfl_id, "status": "Ready", "result": {}}).encode()
    good = {"X-Webhook-Secret": webhooks.key_secret(secret, cluster.rt.label)}
    # A forged secret, a forged token: 401, counted; no bearer token is needed (BFL has none)
    assert httpx.post(url, content=body, headers={"X-Webhook-Secret": "guess"}).status_code == 401
    forged_url = url[: -len(webhooks.job_token(secret, job_id))] + "f" * webhooks.TOKEN_HEX_CHARS
    assert httpx.post(forged_url, content=body, headers=good).status_code == 401
    assert cluster.rt.limiter.counters()["bfl_webhooks_forged"] == 2
    # A finished job's webhook again, and one for a job fluxq never had: 200, ignored
    again = httpx.post(url, content=body, headers=good)
    assert (again.status_code, again.json()) == (200, {"outcome": "ignored"})
    unknown = webhooks.webhook_url(server.url, secret, "never-was")
    assert httpx.post(unknown, content=body, headers=good).json() == {"outcome": "ignored"}
    # A body no webhook has: 413 before it is read
    big = httpx.post(url, content=b"x" * (webhooks.MAX_WEBHOOK_BYTES + 1), headers=good)
    assert big.status_code == 413
    job = cluster.rt.store.get(job_id)
    assert job is not None
    assert job.state is State.DONE


def test_jobs_whose_submit_answer_was_lost_are_recovered_through_their_webhooks(
    hooked: tuple[Cluster, ApiServer],
) -> None:
    cluster, _server = hooked
    # Given BFL creates and bills every task but the POST's answer is lost, and webhooks come
    # late enough (after 1 s) that the workers have settled each job as uncertain
    cluster.sim.configure(submit_lost_rate=1.0, webhook_retry_delays_s=(100.0, 200.0, 500.0))
    assert _enqueue(cluster, "lost", _lines(5, "lost")) == 5
    # When their webhooks arrive, Then every job is recovered, saved, and paid once
    counts = _wait_done(cluster, "lost", 5, timeout_s=60)
    assert counts.get(State.DONE.value) == 5, counts
    stats = cluster.sim.stats(KEY)
    assert (stats["submits"], stats["duplicate_submits"], stats["polls"]) == (5, 0, 0)
    assert cluster.rt.limiter.counters()["bfl_webhooks_recovered"] == 5
    assert cluster.rt.limiter.held() == 0


def _wait_done(cluster: Cluster, batch: str, total: int, *, timeout_s: float) -> dict[str, int]:
    """Until ``total`` jobs are done: an uncertain job counts as failed until it is recovered."""
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = cluster.rt.store.batch_counts(batch)
        if counts.get(State.DONE.value, 0) >= total:
            return counts
        time.sleep(0.2)
    return counts
