"""What keeps ``/healthz`` quick while long polls arrive and wait (``bench/api_isolation.py``):
shared batched reads for the waiters, refusals before FastAPI's stack, no delayed ACKs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis

import fluxq.api
import fluxq.job_events
from fluxq.api import create_job
from fluxq.cli.api import AllowedHosts, bind_listener
from fluxq.job_events import JobEvents
from fluxq.long_poll_gate import waits
from fluxq.tasks import lifecycle
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import Job, State
from tests.support.api import MakeClient, TestClient

GOOD = {"prompt": "a heron", "width": 512, "height": 512}


def _queued(rt: Runtime, job_id: str) -> Job:
    create_job(rt, {"endpoint": "flux-dev", "request": GOOD, "job_id": job_id})
    job = rt.store.get(job_id)
    assert job is not None
    assert not job.state.terminal
    return job


class CountedReads:
    """``JobStore.get_many``, counting its calls (each one batch: one thread hop, one round
    trip)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.calls: list[list[str]] = []

    def __call__(self, job_ids: Sequence[str]) -> list[Job | None]:
        self.calls.append(list(job_ids))
        return self.rt.store.get_many(job_ids)


def test_a_thousand_long_polls_on_one_job_share_their_reads_and_end_with_its_event(
    runtime: Runtime,
) -> None:
    # Given 1,000 long polls on one queued job, and 10 on another
    job = _queued(runtime, "waited-1")
    _queued(runtime, "other-1")
    reads = CountedReads(runtime)

    async def scenario() -> tuple[list[Job | None], float, int]:
        events = JobEvents(runtime.redis, asyncio.get_running_loop(), reads).start()
        try:
            polls = [asyncio.create_task(events.until_ended("waited-1", 20)) for _ in range(1000)]
            others = [asyncio.create_task(events.until_ended("other-1", 0.3)) for _ in range(10)]
            await asyncio.sleep(0.5)  # all held: the subscriber is listening
            before = len(reads.calls)
            # When the job ends (its state change is published)
            ended_at = time.monotonic()
            await asyncio.to_thread(lifecycle.fail, runtime, job, "failed by the test")
            answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
            took = time.monotonic() - ended_at
            await asyncio.gather(*others)
            return answers, took, len(reads.calls) - before
        finally:
            events.close()

    answers, took, reads_after_the_event = asyncio.run(scenario())
    # Then every poll answers at once with the ended job
    assert all(a is not None and a.state is State.FAILED for a in answers)
    assert took < 1.0, took
    # And the event cost one read for all of them, the arrivals a few (not one each)
    assert reads_after_the_event <= 2, reads.calls
    assert len(reads.calls) <= 10, [len(ids) for ids in reads.calls]
    assert all(len(ids) == len(set(ids)) <= 2 for ids in reads.calls)


def test_a_lost_event_still_ends_the_wait_within_the_fallback(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a long poll with no subscriber at all (every event lost) and a 0.4 s fallback
    monkeypatch.setattr(fluxq.job_events, "FALLBACK_S", 0.4)
    job = _queued(runtime, "waited-1")
    reads = CountedReads(runtime)

    async def scenario() -> tuple[Job | None, float]:
        events = JobEvents(runtime.redis, asyncio.get_running_loop(), reads)  # never started
        try:
            poll = asyncio.create_task(events.until_ended("waited-1", 20))
            await asyncio.sleep(0.1)
            # When the job ends
            ended_at = time.monotonic()
            await asyncio.to_thread(lifecycle.fail, runtime, job, "failed by the test")
            answer = await asyncio.wait_for(poll, 5)
            return answer, time.monotonic() - ended_at
        finally:
            events.close()

    answer, took = asyncio.run(scenario())
    # Then the fallback read sees it within its period
    assert answer is not None
    assert answer.state is State.FAILED
    assert took < 0.4 + 0.5, took  # the fallback, plus the read and the test's own delays


def test_a_long_poll_ends_at_its_deadline_with_the_state_then_and_none_when_unknown(
    runtime: Runtime,
) -> None:
    _queued(runtime, "waited-1")
    reads = CountedReads(runtime)

    async def scenario() -> tuple[Job | None, Job | None, float]:
        events = JobEvents(runtime.redis, asyncio.get_running_loop(), reads).start()
        try:
            started = time.monotonic()
            held = await events.until_ended("waited-1", 0.3)
            took = time.monotonic() - started
            return held, await events.until_ended("no-such-job", 5), took
        finally:
            events.close()

    held, unknown, took = asyncio.run(scenario())
    assert held is not None
    assert held.job_id == "waited-1"
    assert not held.state.terminal
    assert 0.3 <= took < 1.0, took
    assert unknown is None


def test_a_failed_batch_read_fails_every_read_in_it_and_the_next_batch_reads_again() -> None:
    calls: list[list[str]] = []

    def flaky(job_ids: Sequence[str]) -> list[Job | None]:
        calls.append(list(job_ids))
        if len(calls) == 1:
            time.sleep(0.1)  # the others join the next batch meanwhile
            return [None for _ in job_ids]
        if len(calls) == 2:
            raise redis.ConnectionError("Redis went away")
        return [None for _ in job_ids]

    async def scenario() -> list[object]:
        client: Any = None  # never started: no subscriber
        events = JobEvents(client, asyncio.get_running_loop(), flaky)
        try:
            first = asyncio.create_task(events.read("a"))
            await asyncio.sleep(0.02)  # the first batch is being read
            second = [asyncio.create_task(events.read(job)) for job in ("a", "b", "b", "c")]
            results = await asyncio.gather(first, *second, return_exceptions=True)
            results.append(await events.read("d"))
            return results
        finally:
            events.close()

    results = asyncio.run(scenario())
    assert results[0] is None
    assert all(isinstance(r, redis.ConnectionError) for r in results[1:5]), results
    assert results[5] is None
    assert calls == [["a"], ["a", "b", "c"], ["d"]]


# --- the gate: refusals before FastAPI's stack ------------------------------------------------


def _route_never_reached(client: TestClient) -> None:
    """Every request that reaches a route needing the Runtime fails (500) from now on."""

    def broken() -> None:
        raise RuntimeError("the route was reached")

    client.app.dependency_overrides[fluxq.api._runtime] = broken  # type: ignore[attr-defined]


def test_long_polls_over_the_bound_are_refused_before_the_route_exactly_as_the_route_does(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the bound reached (0: every long poll is one too many)
    monkeypatch.setattr(fluxq.api, "MAX_LONG_POLLS", 0)
    client = make_client()
    by_the_route = client.get("/v1/jobs/j-1?wait_s=1e0")  # not plain: the gate lets it by
    _route_never_reached(client)
    # When long polls come, plain ones
    answers = [client.get(f"/v1/jobs/j-1?wait_s={w}") for w in ("1", "20", "0.5", "600")]
    # Then the gate refuses them (the route is never reached), as the route refuses
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json() == by_the_route.json()
        assert answer.headers["retry-after"] == by_the_route.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == by_the_route.headers["content-type"]
    assert "0 long polls are held already" in by_the_route.json()["detail"]
    # And anything that is not beyond doubt a long poll goes on to the route
    for path in ("/v1/jobs/j-1?wait_s=0", "/v1/jobs/j-1", "/v1/jobs/j-1?wait_s=1&wait_s=2"):
        assert client.get(path).status_code == 500, path


def test_the_gate_refuses_no_one_the_route_would_answer_otherwise(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fluxq.api, "MAX_LONG_POLLS", 0)
    hosts = AllowedHosts.build("127.0.0.1", [])
    client = make_client(hosts=hosts, api_token="gate-test-token")
    good = {"Authorization": "Bearer gate-test-token"}
    # No token, a wrong one, another scheme: 401, from the route
    assert client.get("/v1/jobs/j-1?wait_s=5").status_code == 401
    assert (
        client.get("/v1/jobs/j-1?wait_s=5", headers={"Authorization": "Bearer x"}).status_code
        == 401
    )
    assert (
        client.get("/v1/jobs/j-1?wait_s=5", headers={"Authorization": "Basic x"}).status_code == 401
    )
    # A Host not allowed: 400 first; a bad wait_s: 422
    assert (
        client.get("/v1/jobs/j-1?wait_s=5", headers={**good, "Host": "evil.example"}).status_code
        == 400
    )
    assert client.get("/v1/jobs/j-1?wait_s=-1", headers=good).status_code == 422
    assert client.get("/v1/jobs/j-1?wait_s=soon", headers=good).status_code == 422
    # The image route and other methods are not long polls
    assert client.get("/v1/jobs/j-1/image?wait_s=5", headers=good).status_code == 404
    # The right token: refused (by the gate)
    _route_never_reached(client)
    refused = client.get("/v1/jobs/j-1?wait_s=5", headers=good)
    assert refused.status_code == 503, refused.text


@pytest.mark.parametrize(
    ("query", "long_poll"),
    [
        (b"wait_s=5", True),
        (b"wait_s=0.25&x=1", True),
        (b"wait_s=0", False),
        (b"wait_s=0.0", False),
        (b"wait_s=05", False),
        (b"wait_s=1e3", False),
        (b"wait_s=1_0", False),
        (b"wait_s=+5", False),
        (b"wait_s=%205", False),
        (b"wait_s=inf", False),
        (b"wait_s=", False),
        (b"wait_s=5&wait_s=6", False),
        (b"", False),
    ],
)
def test_only_a_plain_positive_wait_s_is_beyond_doubt_a_long_poll(
    query: bytes, long_poll: bool
) -> None:
    assert waits(query) is long_poll


def test_the_api_socket_asks_for_tcp_nodelay_on_its_connections() -> None:
    """asyncio sets TCP_NODELAY only on a socket whose proto is IPPROTO_TCP: without it each
    keep-alive response waited 40 ms for the client's delayed ACK."""
    listener = bind_listener("127.0.0.1", 0)
    nodelay: list[int] = []

    async def scenario() -> None:
        def made(transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

        class Recorder(asyncio.Protocol):
            connection_made = staticmethod(made)

        server = await asyncio.get_running_loop().create_server(Recorder, sock=listener)
        async with server:
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(scenario())
    assert nodelay
    assert nodelay[0] != 0
