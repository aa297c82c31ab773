"""The BFL client on httpx.MockTransport: every status code and status string, the URL guard."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from config.errors import (
    DisallowedURL,
    DownloadFailed,
    InvalidRequest,
    JobFailed,
    NotAuthorised,
    NotSent,
    OutcomeUnknown,
    OutOfCredits,
    RateLimited,
    ReadFailed,
    RetryLater,
    ServerError,
    StopAndAlert,
    UnexpectedResponse,
)
from config.settings import Settings
from workers.bfl.client import BFLClient, retry_after_s
from workers.bfl.responses import Status

KEY = "test-key-do-not-log"
Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **overrides: object) -> BFLClient:
    settings = Settings(bfl_api_key=KEY, **overrides)  # type: ignore[arg-type]
    return BFLClient(settings, transport=httpx.MockTransport(handler))


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def test_submit_sends_the_key_as_x_key_and_parses_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "abc",
                "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=abc",
                "cost": 4.5,
                "input_mp": 0,
                "output_mp": 1.98,
            },
        )

    submitted = make_client(handler).submit_json("flux-2-pro", {"prompt": "a cat"})
    assert seen[0].headers["x-key"] == KEY
    assert seen[0].url == "https://api.bfl.ai/v1/flux-2-pro"
    assert json.loads(seen[0].content) == {"prompt": "a cat"}
    assert submitted.id == "abc"
    assert submitted.polling_url == "https://api.eu2.bfl.ai/v1/get_result?id=abc"
    assert (submitted.cost, submitted.input_mp, submitted.output_mp) == (4.5, 0.0, 1.98)


def test_a_webhook_style_answer_without_polling_url_gets_the_base_get_result_url() -> None:
    client = make_client(answer(200, {"id": "t1", "status": "Pending", "webhook_url": "x"}))
    submitted = client.submit_json("flux-dev", {"prompt": "p"})
    assert submitted.polling_url == "https://api.bfl.ai/v1/get_result?id=t1"
    assert submitted.cost is None


@pytest.mark.parametrize(
    ("status", "body", "error", "group"),
    [
        (400, {"detail": "bad request"}, InvalidRequest, JobFailed),
        (
            422,
            {"detail": [{"loc": ["body", "width"], "msg": "too big", "type": "x"}]},
            InvalidRequest,
            JobFailed,
        ),
        (401, {"detail": "Not authenticated"}, NotAuthorised, StopAndAlert),
        (403, {"detail": "Not authenticated"}, NotAuthorised, StopAndAlert),
        (402, {"detail": "Insufficient credits"}, OutOfCredits, StopAndAlert),
        (429, {"detail": "Task limit reached"}, RateLimited, RetryLater),
        (500, {"detail": "Internal error"}, ServerError, RetryLater),
        (502, "bad gateway", ServerError, RetryLater),
        (503, {"detail": "Unavailable"}, ServerError, RetryLater),
        (404, {"detail": "Not Found"}, UnexpectedResponse, JobFailed),
    ],
)
def test_each_http_status_maps_to_the_exception_the_caller_acts_on(
    status: int, body: object, error: type[Exception], group: type[Exception]
) -> None:
    client = make_client(answer(status, body))
    with pytest.raises(error) as caught:
        client.submit_json("flux-dev", {"prompt": "p"})
    assert isinstance(caught.value, group)
    assert KEY not in str(caught.value)
    assert str(status) in str(caught.value)


def test_a_422_names_the_fields_bfl_reported() -> None:
    body = {
        "detail": [
            {"loc": ["body", "width"], "msg": "must be a multiple of 32", "type": "v"},
            {"loc": ["body", "steps"], "msg": "<= 50", "type": "v"},
        ]
    }
    with pytest.raises(InvalidRequest) as caught:
        make_client(answer(422, body)).submit_json("flux-dev", {"prompt": "p"})
    assert caught.value.fields == ("width", "steps")
    assert "width: must be a multiple of 32" in str(caught.value)


def test_a_429_carries_retry_after_when_bfl_sends_it_and_none_otherwise() -> None:
    with pytest.raises(RateLimited) as with_header:
        make_client(answer(429, {"detail": "x"}, {"Retry-After": "7"})).submit_json("flux-dev", {})
    assert with_header.value.retry_after_s == 7.0
    with pytest.raises(RateLimited) as without:
        make_client(answer(429, {"detail": "x"})).submit_json("flux-dev", {})
    assert without.value.retry_after_s is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_s("12") == 12.0
    assert retry_after_s("Thu, 01 Jan 1970 00:01:40 GMT", now_s=40.0) == 60.0
    assert retry_after_s("Thu, 01 Jan 1970 00:00:10 GMT", now_s=40.0) == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")]
)
def test_a_submit_that_never_left_is_safe_to_retry(exc: Exception) -> None:
    with pytest.raises(NotSent):
        make_client(raising(exc)).submit_json("flux-dev", {"prompt": "p"})


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.WriteTimeout("slow"),
    ],
)
def test_a_submit_sent_without_an_answer_is_an_unknown_outcome_not_a_retry(
    exc: Exception,
) -> None:
    with pytest.raises(OutcomeUnknown) as caught:
        make_client(raising(exc)).submit_json("flux-dev", {"prompt": "p"})
    assert not isinstance(caught.value, RetryLater)


def test_a_poll_that_broke_off_is_a_harmless_retry() -> None:
    client = make_client(raising(httpx.ReadTimeout("slow")))
    with pytest.raises(ReadFailed):
        client.get_result("https://api.bfl.ai/v1/get_result?id=1")


@pytest.mark.parametrize(
    ("raw", "status", "terminal"),
    [
        ("Pending", Status.PENDING, False),
        ("Ready", Status.READY, True),
        ("Request Moderated", Status.REQUEST_MODERATED, True),
        ("Content Moderated", Status.CONTENT_MODERATED, True),
        ("Error", Status.ERROR, True),
        ("Task not found", Status.TASK_NOT_FOUND, True),
        ("Failed", Status.UNKNOWN, True),
        ("pending", Status.UNKNOWN, True),
        (None, Status.UNKNOWN, True),
    ],
)
def test_every_bfl_status_string_parses_and_unknown_ones_are_terminal(
    raw: str | None, status: Status, terminal: bool
) -> None:
    client = make_client(answer(200, {"id": "t", "status": raw, "result": None}))
    result = client.get_result("https://api.bfl.ai/v1/get_result?id=t")
    assert result.status is status
    assert result.status.terminal is terminal
    assert result.raw_status == str(raw)


def test_a_ready_result_carries_sample_seed_prompt_and_progress() -> None:
    body = {
        "id": "t",
        "status": "Ready",
        "result": {"sample": "https://delivery-eu1.bfl.ai/x.jpeg", "prompt": "cat", "seed": 42},
        "progress": 1.0,
    }
    result = make_client(answer(200, body)).get_result("https://api.bfl.ai/v1/get_result?id=t")
    assert result.sample_url == "https://delivery-eu1.bfl.ai/x.jpeg"
    assert (result.seed, result.prompt, result.progress) == (42, "cat", 1.0)


def test_content_moderation_reasons_are_surfaced() -> None:
    body = {"id": "t", "status": "Content Moderated", "details": {"Moderation Reasons": ["NSFW"]}}
    result = make_client(answer(200, body)).get_result("https://api.bfl.ai/v1/get_result?id=t")
    assert result.moderation_reasons == ("NSFW",)


def test_the_polling_url_is_used_verbatim_on_another_cluster_host() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"id": "t", "status": "Pending", "progress": 0.2})

    make_client(handler).get_result("https://api.eu2.bfl.ai/v1/get_result?id=t&x=1")
    assert seen == ["https://api.eu2.bfl.ai/v1/get_result?id=t&x=1"]


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/v1/get_result?id=t",
        "http://api.bfl.ai/v1/get_result?id=t",
        "https://169.254.169.254/latest",
    ],
)
def test_a_polling_url_outside_the_allowed_hosts_is_refused_before_any_request(url: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    with pytest.raises(DisallowedURL, match="not allowed"):
        make_client(handler).get_result(url)
    assert seen == []


def test_download_streams_to_disk_with_sha256_and_never_sends_the_key(tmp_path: Path) -> None:
    payload = b"\xff\xd8" + bytes(range(256)) * 1000
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=payload, headers={"content-type": "image/jpeg"})

    target = tmp_path / "img.jpeg"
    done = make_client(handler).download("https://delivery-eu1.bfl.ai/a.jpeg?sig=x", target)
    assert target.read_bytes() == payload
    assert done.sha256 == hashlib.sha256(payload).hexdigest()
    assert done.size_bytes == len(payload)
    assert done.content_type == "image/jpeg"
    assert "x-key" not in seen[0].headers


@pytest.mark.parametrize("status", [403, 404])
def test_an_expired_delivery_url_fails_as_expired_and_leaves_no_file(
    tmp_path: Path, status: int
) -> None:
    target = tmp_path / "img.jpeg"
    client = make_client(lambda r: httpx.Response(status, text="expired"))
    with pytest.raises(DownloadFailed) as caught:
        client.download("https://delivery-eu1.bfl.ai/a.jpeg", target)
    assert caught.value.expired
    assert not target.exists()


def test_a_download_cut_off_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b"first part"
            raise httpx.ReadError("connection reset")

    target = tmp_path / "img.jpeg"
    client = make_client(lambda r: httpx.Response(200, stream=Broken()))
    with pytest.raises(ReadFailed):
        client.download("https://delivery-eu1.bfl.ai/a.jpeg", target)
    assert not target.exists()


def test_credits_returns_the_balance_and_rejects_a_body_without_a_number() -> None:
    assert make_client(answer(200, {"credits": 123.5})).credits() == 123.5
    with pytest.raises(UnexpectedResponse):
        make_client(answer(200, {"credits": "lots"})).credits()


def test_the_client_repr_never_shows_the_key() -> None:
    client = make_client(answer(200, {}))
    assert KEY not in repr(client)
    assert "api_key=set" in repr(client)


def test_submit_posts_only_the_fields_the_user_set_from_a_validated_request() -> None:
    from config.catalog import validate_request

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t", "polling_url": "https://api.bfl.ai/x?id=t"})

    request = validate_request("flux-pro-1.1", {"prompt": "a fox", "width": 512, "seed": 3})
    make_client(handler).submit("flux-pro-1.1", request)
    assert json.loads(seen[0].content) == {"prompt": "a fox", "width": 512, "seed": 3}
    assert seen[0].url.path == "/v1/flux-pro-1.1"


def test_submit_to_an_unknown_endpoint_is_refused_before_any_request() -> None:
    from config.catalog import validate_request

    request = validate_request("flux-dev", {"prompt": "p"})
    with pytest.raises(InvalidRequest, match="endpoint"):
        make_client(answer(200, {})).submit("flux-nope", request)
