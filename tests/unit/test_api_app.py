"""The HTTP API in-process (``TestClient``) over a real Redis, no worker: what a client sees."""

from __future__ import annotations

import json
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.exceptions import StarletteDeprecationWarning

from config.settings import load_settings
from fluxq.api import create_app, openapi_json
from tasks.inline_submit import InlineSubmits
from workers.dispatch import CeleryDispatcher
from workers.state import keys

with warnings.catch_warnings():
    # Starlette 1.x warns that its TestClient on httpx (not httpx2) is deprecated; it works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "api-test-token"
GOOD = {"prompt": "a heron", "width": 512, "height": 512}

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(redis_url: str, tmp_path: Path) -> Iterator[MakeClient]:
    """An API client on a flushed Redis; lifespan runs (the app's Runtime), closed at the end."""
    opened: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        options: dict[str, Any] = {"bfl_api_key": "offline-test-key", **overrides}
        settings = load_settings(
            _env_file=None, redis_url=redis_url, output_dir=tmp_path / "out", **options
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


def test_post_job_creates_it_and_a_retry_answers_200(make_client: MakeClient) -> None:
    client = make_client()
    body = {"endpoint": "flux-dev", "request": GOOD, "job_id": "heron-1", "batch": "b1"}
    first = client.post("/v1/jobs", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["id"] == "heron-1"
    assert first.json()["batch"] == "b1"
    # No worker: the job waits (or was admitted and its submit message waits in the broker).
    assert first.json()["state"] in ("queued", "admitted")
    shown = client.get("/v1/jobs/heron-1").json()
    assert shown["endpoint"] == "flux-dev"
    assert shown["state"] == first.json()["state"]
    assert "queued" in shown["times"]
    again = client.post("/v1/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == "heron-1"


def test_a_queued_job_cancels_and_an_admitted_one_does_not(make_client: MakeClient) -> None:
    client = make_client(active_cap=1)
    for job_id in ("first", "second"):
        body = {"endpoint": "flux-dev", "request": GOOD, "job_id": job_id}
        assert client.post("/v1/jobs", json=body).status_code == 201
    assert client.get("/v1/jobs/first").json()["state"] == "admitted"
    assert client.get("/v1/jobs/second").json()["state"] == "queued"
    cancelled = client.delete("/v1/jobs/second")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"id": "second", "state": "cancelled"}
    assert client.delete("/v1/jobs/second").status_code == 200  # idempotent
    refused = client.delete("/v1/jobs/first")
    assert refused.status_code == 409
    assert refused.json()["state"] == "admitted"
    assert client.delete("/v1/jobs/nobody").status_code == 404


def test_a_bad_body_names_every_bad_field_in_bfls_shape(make_client: MakeClient) -> None:
    client = make_client()
    body = {
        "endpoint": "flux-dev",
        "request": {"prompt": 5, "width": "wide", "webhook_secret": "s3cret"},
        "priority": 12,
        "batch": "no spaces",
        "callback": {"task": "os.system"},
    }
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    locs = [tuple(item["loc"]) for item in detail]
    for loc in [
        ("body", "request", "prompt"),
        ("body", "request", "width"),
        ("body", "request", "webhook_secret"),
        ("body", "priority"),
        ("body", "batch"),
        ("body", "callback"),
    ]:
        assert loc in locs, locs
    assert all(set(item) == {"loc", "msg", "type"} for item in detail)
    assert "s3cret" not in answer.text
    assert client.get("/v1/batches/default").status_code == 404  # nothing was enqueued


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (b"not json", ["body"]),
        (b"[1, 2]", ["body"]),
        (b'{"request": {"prompt": "x"}}', ["body", "endpoint"]),
        (b'{"endpoint": "flux-nope", "request": {"prompt": "x"}}', ["body", "endpoint"]),
    ],
)
def test_malformed_bodies_are_422_too(make_client: MakeClient, raw: bytes, loc: list[str]) -> None:
    answer = make_client().post("/v1/jobs", content=raw)
    assert answer.status_code == 422, answer.text
    assert loc in [item["loc"] for item in answer.json()["detail"]]


def test_a_token_is_required_when_set(make_client: MakeClient) -> None:
    client = make_client(api_token=TOKEN)
    assert client.get("/healthz").status_code == 200
    # /readyz needs no token; with no worker seen it is 503, and says why
    unready = client.get("/readyz")
    assert (unready.status_code, unready.json()) == (503, {"redis": True, "workers": 0})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = client.get("/v1/jobs/x", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics", headers=headers).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/jobs/x", headers=good).status_code == 404
    metrics = client.get("/metrics", headers=good)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "fluxq_effective_cap" in metrics.text


def test_without_a_token_routes_are_open(make_client: MakeClient) -> None:
    client = make_client()
    assert client.get("/metrics").status_code == 200
    answer = client.get("/v1/jobs/unknown-job")
    assert answer.status_code == 404
    assert "unknown-job" in answer.json()["detail"]


def test_oversized_bodies_are_413_by_length_and_while_streaming(make_client: MakeClient) -> None:
    client = make_client(api_max_body_bytes=200)
    big = {"endpoint": "flux-dev", "request": {"prompt": "x" * 500}}
    assert client.post("/v1/jobs", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it arrives
        for i in range(10):
            yield json.dumps({"id": f"l{i}", "prompt": "y" * 40}).encode() + b"\n"

    answer = client.post("/v1/batches?name=big&endpoint=flux-dev", content=chunks())
    assert answer.status_code == 413
    assert client.get("/v1/batches/big").status_code == 404


def test_long_poll_returns_at_the_deadline_with_the_state(make_client: MakeClient) -> None:
    client = make_client(active_cap=1)
    for job_id in ("a", "b"):
        client.post("/v1/jobs", json={"endpoint": "flux-dev", "request": GOOD, "job_id": job_id})
    answer = client.get("/v1/jobs/b?wait_s=0.4")
    assert answer.status_code == 200
    assert answer.json()["state"] == "queued"
    assert client.get("/v1/jobs/b?wait_s=-1").status_code == 422
    assert client.get("/v1/jobs/b/image").status_code == 404


def test_a_batch_with_a_bad_line_is_refused_whole(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    client = make_client()
    lines = [{"id": "ok1", "prompt": "a"}, {"id": "bad", "prompt": "b", "width": "wide"}]
    body = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    answer = client.post("/v1/batches?name=night&endpoint=flux-dev", content=body)
    assert answer.status_code == 422, answer.text
    locs = [item["loc"] for item in answer.json()["detail"]]
    assert ["body", 2, "width"] in locs
    assert any(loc[:2] == ["body", 3] for loc in locs)
    assert not redis_client.exists(keys.batch("night"))
    assert client.get("/v1/batches/night").status_code == 404


def test_a_job_whose_prompt_is_not_utf8_is_422_naming_it_and_nothing_is_enqueued(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    # JSON's \ud800 escape is valid JSON, but a lone surrogate cannot be sent to BFL as UTF-8
    client = make_client()
    raw = b'{"endpoint": "flux-dev", "request": {"prompt": "a heron \\ud800"}, "job_id": "h1"}'
    answer = client.post("/v1/jobs", content=raw)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert [item["loc"] for item in detail] == [["body", "request", "prompt"]]
    assert "lone surrogate" in detail[0]["msg"]
    assert redis_client.keys("fluxq:job:*") == []
    assert client.get("/v1/jobs/h1").status_code == 404


def test_an_unknown_field_whose_name_is_not_utf8_is_422_not_500(make_client: MakeClient) -> None:
    client = make_client()
    raw = b'{"endpoint": "flux-dev", "request": {"prompt": "a"}, "colour\\ud800": 1}'
    answer = client.post("/v1/jobs", content=raw)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "colour\\ud800"]


def test_a_batch_line_that_is_not_utf8_is_named_and_nothing_is_enqueued(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    client = make_client()
    body = b'{"id": "ok1", "prompt": "a"}\n{"id": "bad", "prompt": "a heron \\ud800"}\n'
    answer = client.post("/v1/batches?name=night&endpoint=flux-dev", content=body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert [item["loc"] for item in detail] == [["body", 2, "prompt"]]
    assert "lone surrogate" in detail[0]["msg"]
    assert not redis_client.exists(keys.batch("night"))
    assert client.get("/v1/batches/night").status_code == 404


def test_a_batch_goes_in_and_reports(make_client: MakeClient) -> None:
    client = make_client()
    body = "".join(json.dumps({"id": f"l{i}", "prompt": f"p{i}"}) + "\n" for i in range(5))
    answer = client.post("/v1/batches?name=night&endpoint=flux-dev&budget=100", content=body)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {
        "batch": "night", "added": 5, "already_there": 0, "conflicts": 0, "lines": 5,
    }  # fmt: skip
    again = client.post("/v1/batches?name=night&endpoint=flux-dev", content=body)
    assert again.json()["already_there"] == 5
    status = client.get("/v1/batches/night").json()
    assert status["total"] == 5
    assert status["budget"] == 100
    report = client.get("/v1/batches/night/report")
    assert report.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in report.text.splitlines()]
    assert sorted(row["line_id"] for row in rows) == [f"l{i}" for i in range(5)]
    cancelled = client.delete("/v1/batches/night")
    assert cancelled.status_code == 200
    assert client.get("/v1/batches/night").json()["paused"] == "cancelled"
    assert client.post("/v1/batches?name=night", content=body).status_code == 409
    assert client.delete("/v1/batches/nothing").status_code == 404
    assert client.get("/v1/batches/nothing/report").status_code == 404


def test_bad_batch_parameters_are_named(make_client: MakeClient) -> None:
    answer = make_client().post(
        "/v1/batches?name=a%20b&endpoint=flux-nope&priority=11&budget=-1", content=b"{}\n"
    )
    assert answer.status_code == 422
    locs = [item["loc"] for item in answer.json()["detail"]]
    for name in ("name", "endpoint", "priority", "budget"):
        assert ["query", name] in locs


def test_redis_down_is_503_and_never_a_traceback(make_client: MakeClient) -> None:
    client = make_client()
    client.app.state.runtime.redis.connection_pool.connection_kwargs["port"] = 1  # type: ignore[attr-defined]
    client.app.state.runtime.redis.connection_pool.disconnect()  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 503
    answer = client.get("/v1/jobs/x")
    assert answer.status_code == 503
    assert answer.json() == {"detail": "redis unavailable"}
    assert client.get("/healthz").status_code == 200


def test_a_redis_that_hangs_is_503_after_the_timeout_not_a_stalled_api(
    make_client: MakeClient,
) -> None:
    # A loopback listener that accepts connections and never answers (a hung Redis)
    with socket.create_server(("127.0.0.1", 0)) as hung:
        client = make_client(redis_timeout_s=0.3)
        kwargs = client.app.state.runtime.redis.connection_pool.connection_kwargs  # type: ignore[attr-defined]
        kwargs["port"] = hung.getsockname()[1]
        client.app.state.runtime.redis.connection_pool.disconnect()  # type: ignore[attr-defined]
        started = time.monotonic()
        answer = client.get("/v1/jobs/x")
        waited_s = time.monotonic() - started
    assert answer.status_code == 503
    assert answer.json() == {"detail": "redis unavailable"}
    # 0.3 s per attempt, redis-py's retries with backoff: seconds, never the 120 s test timeout
    assert waited_s < 15, waited_s


def test_an_unexpected_error_is_500_internal_error(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()

    def broken(job_id: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.runtime.store, "get", broken)  # type: ignore[attr-defined]
    answer = client.get("/v1/jobs/x")
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error"}
    assert "secret internals" not in answer.text


def test_committed_openapi_matches_the_app() -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")
    assert committed == openapi_json(), "regenerate: python -m fluxq.api > docs/openapi.json"
    paths = json.loads(committed)["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/batches", "/healthz", "/metrics"} <= set(paths)


def test_readyz_counts_workers_that_beat_lately(make_client: MakeClient) -> None:
    client = make_client()
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    now = time.time()
    # A worker process silent for longer than three sweep intervals does not count
    rt.redis.zadd(keys.WORKERS, {"host-a:1": now - 4 * rt.settings.sweep_interval_s})
    assert client.get("/readyz").status_code == 503
    rt.redis.zadd(keys.WORKERS, {"host-b:2": now})
    answer = client.get("/readyz")
    assert (answer.status_code, answer.json()) == (200, {"redis": True, "workers": 1})


def test_the_api_runs_its_own_submits_unless_told_not_to_or_without_a_key(
    make_client: MakeClient,
) -> None:
    assert isinstance(make_client().app.state.runtime.dispatch, InlineSubmits)
    off = make_client(api_submits=False).app.state.runtime.dispatch
    assert isinstance(off, CeleryDispatcher)
    keyless = make_client(bfl_api_key=None).app.state.runtime.dispatch
    assert isinstance(keyless, CeleryDispatcher)
