"""The HTTP API in-process (``TestClient``) over a real Redis, no worker: what a client sees."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

import fluxq.api
from fluxq.api import loggable, openapi_json
from fluxq.cli.api import AllowedHosts
from fluxq.config.errors import ConfigError
from fluxq.config.settings import load_settings
from fluxq.tasks import lifecycle
from fluxq.tasks.inline_submit import InlineSubmits
from fluxq.workers.dispatch import CeleryDispatcher
from fluxq.workers.state import keys
from tests.support.api import BASE_URL, MakeClient

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "api-test-token"
GOOD = {"prompt": "a heron", "width": 512, "height": 512}
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
WEBHOOK_MODE = {
    "bfl_webhook_base_url": BASE_URL,
    "bfl_webhook_secret": "unit-test-webhook-secret-0123456789",
}


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
    answer = make_client().post("/v1/jobs", content=raw, headers=JSON)
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

    answer = client.post("/v1/batches?name=big&endpoint=flux-dev", content=chunks(), headers=NDJSON)
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
    answer = client.post("/v1/batches?name=night&endpoint=flux-dev", content=body, headers=NDJSON)
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
    answer = client.post("/v1/jobs", content=raw, headers=JSON)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert [item["loc"] for item in detail] == [["body", "request", "prompt"]]
    assert "lone surrogate" in detail[0]["msg"]
    assert redis_client.keys("fluxq:job:*") == []
    assert client.get("/v1/jobs/h1").status_code == 404


def test_an_unknown_field_whose_name_is_not_utf8_is_422_not_500(make_client: MakeClient) -> None:
    client = make_client()
    raw = b'{"endpoint": "flux-dev", "request": {"prompt": "a"}, "colour\\ud800": 1}'
    answer = client.post("/v1/jobs", content=raw, headers=JSON)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "colour\\ud800"]


def test_a_batch_line_that_is_not_utf8_is_named_and_nothing_is_enqueued(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    client = make_client()
    body = b'{"id": "ok1", "prompt": "a"}\n{"id": "bad", "prompt": "a heron \\ud800"}\n'
    answer = client.post("/v1/batches?name=night&endpoint=flux-dev", content=body, headers=NDJSON)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert [item["loc"] for item in detail] == [["body", 2, "prompt"]]
    assert "lone surrogate" in detail[0]["msg"]
    assert not redis_client.exists(keys.batch("night"))
    assert client.get("/v1/batches/night").status_code == 404


def test_a_batch_goes_in_and_reports(make_client: MakeClient) -> None:
    client = make_client()
    body = "".join(json.dumps({"id": f"l{i}", "prompt": f"p{i}"}) + "\n" for i in range(5))
    answer = client.post(
        "/v1/batches?name=night&endpoint=flux-dev&budget=100", content=body, headers=NDJSON
    )
    assert answer.status_code == 201, answer.text
    assert answer.json() == {
        "batch": "night", "added": 5, "already_there": 0, "conflicts": 0, "lines": 5,
    }  # fmt: skip
    again = client.post("/v1/batches?name=night&endpoint=flux-dev", content=body, headers=NDJSON)
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
    assert client.post("/v1/batches?name=night", content=body, headers=NDJSON).status_code == 409
    assert client.delete("/v1/batches/nothing").status_code == 404
    assert client.get("/v1/batches/nothing/report").status_code == 404


def test_bad_batch_parameters_are_named(make_client: MakeClient) -> None:
    answer = make_client().post(
        "/v1/batches?name=a%20b&endpoint=flux-nope&priority=11&budget=-1",
        content=b"{}\n",
        headers=NDJSON,
    )
    assert answer.status_code == 422
    locs = [item["loc"] for item in answer.json()["detail"]]
    for name in ("name", "endpoint", "priority", "budget"):
        assert ["query", name] in locs


def test_redis_down_is_503_and_never_a_traceback(make_client: MakeClient) -> None:
    # Every connection of the app's pool (and its event listener) goes to a closed port.
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    client = make_client(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.3)
    assert client.get("/readyz").status_code == 503
    answer = client.get("/v1/jobs/x")
    assert answer.status_code == 503
    assert answer.json() == {"detail": "redis unavailable"}
    assert client.get("/healthz").status_code == 200


def test_a_job_no_replica_confirms_is_503_saying_to_send_it_again(
    make_client: MakeClient,
) -> None:
    # The test's Redis has no replica: a job that must be on one cannot be confirmed
    client = make_client(redis_min_replicas=1, redis_replica_wait_ms=20)
    body = {"endpoint": "flux-dev", "request": {"prompt": "a heron"}, "job_id": "heron"}
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert "FLUXQ_REDIS_MIN_REPLICAS" in detail
    assert "same job id" in detail
    # It was made on the master: sent again with the same id it is found, not made twice
    relaxed = make_client()
    assert relaxed.post("/v1/jobs", json=body).status_code == 200
    assert relaxed.get("/v1/jobs/heron").json()["state"] == "queued"


def test_a_redis_that_hangs_is_503_after_the_timeout_not_a_stalled_api(
    make_client: MakeClient,
) -> None:
    # A loopback listener that accepts connections and never answers (a hung Redis)
    with socket.create_server(("127.0.0.1", 0)) as hung:
        # Pointed there from the start: a pool re-aimed in place keeps its old connections,
        # which would reach the real Redis and make this test pass or fail by chance.
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        client = make_client(redis_url=url, redis_timeout_s=0.3)
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


# --- issue 19: a browser tab and a careless client ----------------------------------------------


def no_jobs(redis_client: redis.Redis[str]) -> bool:
    return redis_client.keys("fluxq:job:*") == []


def test_a_post_without_its_own_content_type_is_415_and_enqueues_nothing(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    # Given a job body that is valid JSON, sent as a page of another site can send it unasked
    client = make_client()
    raw = json.dumps({"endpoint": "flux-dev", "request": GOOD, "job_id": "csrf"})
    for headers in (
        {"Content-Type": "text/plain;charset=UTF-8"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {},  # a fetch() of a Blob with no type sends no Content-Type
    ):
        # When it is posted, then it is 415 naming the type accepted, and nothing is enqueued
        answer = client.post("/v1/jobs", content=raw, headers=headers)
        assert answer.status_code == 415, (headers, answer.text)
        assert "application/json" in answer.json()["detail"]
    lines = json.dumps({"id": "l1", "prompt": "a"}) + "\n"
    for kind in ("text/plain", "application/json", ""):
        answer = client.post(
            "/v1/batches?name=csrf&endpoint=flux-dev", content=lines, headers={"Content-Type": kind}
        )
        assert answer.status_code == 415, (kind, answer.text)
        assert "application/x-ndjson or application/jsonl" in answer.json()["detail"]
    assert no_jobs(redis_client)
    assert client.get("/v1/batches/csrf").status_code == 404
    # And the documented types pass, with parameters
    good = {"Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/jobs", content=raw, headers=good).status_code == 201
    jsonl = {"Content-Type": "application/jsonl"}
    assert client.post("/v1/batches?name=ok&endpoint=flux-dev", content=lines, headers=jsonl)
    assert client.get("/v1/batches/ok").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.2:8000"},  # another origin on this very machine
        {"Origin": "http://127.0.0.1:9000"},  # another port is another origin
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"},
    ],
    ids=["other-site", "other-loopback", "other-port", "null", "cross-site", "same-site", "both"],
)
def test_a_state_changing_request_from_another_origin_is_403(
    make_client: MakeClient, redis_client: redis.Redis[str], headers: dict[str, str]
) -> None:
    client = make_client()
    body = {"endpoint": "flux-dev", "request": GOOD, "job_id": "csrf"}
    answer = client.post("/v1/jobs", json=body, headers=headers)
    assert answer.status_code == 403, answer.text
    assert answer.json()["detail"].startswith("refused: ")
    assert "access-control-allow-origin" not in answer.headers
    lines = json.dumps({"id": "l1", "prompt": "a"}) + "\n"
    both = headers | NDJSON
    assert client.post("/v1/batches?name=x&endpoint=flux-dev", content=lines, headers=both)
    assert no_jobs(redis_client)
    # a DELETE too (a queued job made by a local client, cancelled by nobody else)
    assert client.post("/v1/jobs", json=body).status_code == 201
    assert client.delete("/v1/jobs/csrf", headers=headers).status_code == 403
    assert client.get("/v1/jobs/csrf").json()["state"] in ("queued", "admitted")


def test_a_request_from_this_origin_or_no_browser_passes(make_client: MakeClient) -> None:
    client = make_client()
    for i, headers in enumerate(
        [
            {},  # curl, httpx, another service
            {"Origin": BASE_URL},  # the API's own /docs page ("Try it out")
            {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},  # typed by the user
        ]
    ):
        body = {"endpoint": "flux-dev", "request": GOOD, "job_id": f"ok-{i}"}
        answer = client.post("/v1/jobs", json=body, headers=headers)
        assert answer.status_code == 201, (headers, answer.text)
        assert "access-control-allow-origin" not in answer.headers
    # and a GET from another origin is not refused (it cannot read the answer, nor change a thing)
    assert client.get("/v1/jobs/ok-0", headers={"Origin": "http://evil.example"}).status_code == 200


def test_a_host_not_on_the_allow_list_is_400_dns_rebinding(make_client: MakeClient) -> None:
    # Given `fluxq api` bound to 127.0.0.1 with no token, as by default
    client = make_client(hosts=AllowedHosts.build("127.0.0.1", []))
    # When a page whose name was made to resolve to 127.0.0.1 reads it, then every route is 400
    for path in ("/metrics", "/v1/batches/night/report", "/v1/jobs/x/image", "/openapi.json"):
        answer = client.get(path, headers={"Host": "rebind.evil.example:8000"})
        assert answer.status_code == 400, (path, answer.text)
        detail = answer.json()["detail"]
        assert "rebind.evil.example" in detail
        assert "FLUXQ_API_ALLOWED_HOSTS" in detail
        assert "\n" not in detail
    assert client.get("/metrics", headers={"Host": "127.0.0.1.evil.example"}).status_code == 400
    assert client.get("/metrics", headers={"Host": "127.0.0.1:80:80"}).status_code == 400
    # And the loopback names, with any port or none, are answered
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1234", "[::1]:8000", "127.0.0.1"):
        assert client.get("/metrics", headers={"Host": host}).status_code == 200, host


def test_the_allow_list_takes_the_bind_address_the_setting_and_the_webhook_host() -> None:
    hosts = AllowedHosts.build(
        "10.0.0.5", ["api.example.com", "*.corp.example"], "https://hooks.example.net/x"
    )
    for good in ("10.0.0.5:8000", "api.example.com", "a.b.corp.example:443", "hooks.example.net"):
        assert hosts.allows(good), good
    for bad in ("corp.example", "example.com", "10.0.0.6", "", None, "api.example.com:x"):
        assert not hosts.allows(bad), bad
    assert AllowedHosts.build("::1", []).allows("[::1]:9")
    # A wildcard bind (only possible with a token) answers any name, as `*` does
    assert AllowedHosts.build("0.0.0.0", []).allows("fluxq.internal:8000")
    assert AllowedHosts.build("127.0.0.1", ["*"]).allows("anything")


def test_any_host_needs_a_token_and_entries_are_host_names() -> None:
    with pytest.raises(ConfigError, match=r"FLUXQ_API_ALLOWED_HOSTS.*needs FLUXQ_API_TOKEN"):
        load_settings(_env_file=None, api_allowed_hosts="*")
    with pytest.raises(ConfigError, match="FLUXQ_FLOWER_ALLOWED_HOSTS"):
        load_settings(_env_file=None, flower_allowed_hosts="*")
    with pytest.raises(ConfigError, match="not a host name"):
        load_settings(_env_file=None, api_allowed_hosts="https://api.example.com")
    settings = load_settings(
        _env_file=None, api_token=TOKEN, api_allowed_hosts=" *, API.example.com,[::1] "
    )
    assert settings.api_allowed_hosts == ["*", "api.example.com", "[::1]"]


def test_a_webhook_during_a_redis_hang_stalls_no_other_request(make_client: MakeClient) -> None:
    # Given webhook mode and a Redis that accepts connections and never answers
    with socket.create_server(("127.0.0.1", 0)) as hung:
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"  # from the start: see above
        client = make_client(redis_url=url, redis_timeout_s=2, **WEBHOOK_MODE)
        answers: list[Any] = []

        def forged() -> None:  # a wrong token: counted as forged, in Redis, which hangs
            answers.append(client.post("/v1/bfl/webhooks/job-1/not-the-token", json={}))

        webhook = threading.Thread(target=forged, daemon=True)
        webhook.start()
        time.sleep(0.5)
        assert webhook.is_alive(), "the webhook did not wait on the hung Redis"
        # When /healthz is asked while the webhook waits
        started = time.monotonic()
        alive = client.get("/healthz")
        waited_s = time.monotonic() - started
        webhook.join(timeout=60)
    # Then it answers at once, and the webhook is a 503 once the Redis timeout ends it
    assert alive.status_code == 200
    assert waited_s < 1.0, waited_s
    assert not webhook.is_alive()
    assert answers[0].status_code == 503, answers[0].text


def test_a_job_body_has_its_own_small_limit(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    client = make_client(api_max_job_bytes=2048)
    big = {"endpoint": "flux-dev", "request": {"prompt": "x" * 3000}}
    answer = client.post("/v1/jobs", json=big)
    assert answer.status_code == 413, answer.text
    assert "2,048 bytes (FLUXQ_API_MAX_JOB_BYTES)" in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"endpoint": "flux-dev", "request": {"prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}}'

    assert client.post("/v1/jobs", content=chunks(), headers=JSON).status_code == 413
    assert no_jobs(redis_client)
    # A batch of the same size goes in: its limit is FLUXQ_API_MAX_BODY_BYTES (64 MiB)
    lines = "".join(json.dumps({"id": f"l{i}", "prompt": "z" * 300}) + "\n" for i in range(10))
    batch = client.post("/v1/batches?name=b&endpoint=flux-dev", content=lines, headers=NDJSON)
    assert batch.status_code == 201, batch.text


def test_the_default_job_limit_is_below_the_batch_limit(make_client: MakeClient) -> None:
    client = make_client()
    raw = b'{"endpoint": "flux-dev", "request": {"prompt": "' + b"x" * (9 << 20) + b'"}}'
    answer = client.post("/v1/jobs", content=raw, headers=JSON)
    assert answer.status_code == 413
    assert "8,388,608 bytes (FLUXQ_API_MAX_JOB_BYTES)" in answer.json()["detail"]


@pytest.mark.parametrize(
    "raw",
    [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 40 + b"]" * 40],
    ids=["5000-deep-list", "5000-deep-object", "40-deep"],
)
def test_json_nested_too_deep_is_422_naming_the_body(make_client: MakeClient, raw: bytes) -> None:
    answer = make_client().post("/v1/jobs", content=raw, headers=JSON)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == [
        {"loc": ["body"], "msg": "JSON nested deeper than 32 levels", "type": "json_invalid"}
    ]


def test_long_polls_are_bounded_with_a_503_and_retry_after(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fluxq.api, "MAX_LONG_POLLS", 2, raising=False)
    client = make_client(active_cap=1)
    for job_id in ("a", "b"):
        client.post("/v1/jobs", json={"endpoint": "flux-dev", "request": GOOD, "job_id": job_id})
    held = [
        threading.Thread(target=client.get, args=("/v1/jobs/b?wait_s=3",), daemon=True)
        for _ in range(2)
    ]
    for thread in held:
        thread.start()
    deadline = time.monotonic() + 5
    state = client.app.state  # type: ignore[attr-defined]
    while getattr(state, "long_polls", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = client.get("/v1/jobs/b?wait_s=1")
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "2 long polls" in refused.json()["detail"]
    assert client.get("/v1/jobs/b").status_code == 200  # no wait_s: never refused
    for thread in held:
        thread.join(timeout=10)
    assert state.long_polls == 0
    assert client.get("/v1/jobs/b?wait_s=0.2").status_code == 200


def test_outside_text_reaches_the_log_escaped_and_cut(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(**WEBHOOK_MODE)
    forged_line = "x\n2026-12-07 10:00:00 WARNING fluxq.api all good"
    long_id = "j" * 50_000  # httpx sends URLs up to 64 KiB
    with caplog.at_level(logging.WARNING):
        for job_id in (forged_line, long_id, "a\x1b[31mred\u2028b"):
            answer = client.post(f"/v1/bfl/webhooks/{quote(job_id, safe='')}/token", json={})
            assert answer.status_code == 401
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert all("\n" not in m and "\x1b" not in m and "\u2028" not in m for m in messages)
    assert "x\\n2026-12-07" in messages[0]
    assert len(messages[1]) < 400
    assert "(50,000 characters)" in messages[1]
    assert loggable("a\r\nb\x00") == "a\\r\\nb\\x00"


def test_the_docs_are_behind_the_token_when_one_is_set(make_client: MakeClient) -> None:
    client = make_client(api_token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=good).status_code == 200, path
    assert client.get("/openapi.json", headers=good).json()["info"]["title"] == "fluxq"
    open_client = make_client()
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert open_client.get(path).status_code == 200, path


def test_long_polls_wake_on_their_jobs_event_and_do_not_read_redis_every_step(
    make_client: MakeClient, redis_client: redis.Redis[str]
) -> None:
    # Given 40 long polls held on one queued job
    client = make_client()
    job = {"endpoint": "flux-dev", "request": GOOD, "job_id": "waited-1"}
    assert client.post("/v1/jobs", json=job).status_code == 201
    answers: list[tuple[float, str]] = []

    def long_poll() -> None:
        answer = client.get("/v1/jobs/waited-1", params={"wait_s": 20})
        answers.append((time.monotonic(), answer.json()["state"]))

    def reads() -> int:
        stats = redis_client.info("commandstats")
        return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))

    threads = [threading.Thread(target=long_poll) for _ in range(40)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # all held
    before = reads()
    time.sleep(1.5)
    # Then while nothing happens they cost at most one fallback read each (every 0.15 s they
    # read 400 times in those 1.5 s)
    assert reads() - before <= 40 + 10
    # And when the job ends (its state change is published), every poll answers at once
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    ended_at = time.monotonic()
    job_now = rt.store.get("waited-1")
    assert job_now is not None
    assert lifecycle.fail(rt, job_now, "failed by the test")
    for thread in threads:
        thread.join(timeout=10)
    assert len(answers) == 40
    assert {state for _, state in answers} == {"failed"}
    assert max(at for at, _ in answers) - ended_at < 1.0
