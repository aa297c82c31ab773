"""The BFL client on httpx.MockTransport: every status code and status string, the URL guard."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fluxq.config.errors import (
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
from fluxq.config.settings import Settings
from fluxq.workers.bfl.client import BFLClient, retry_after_s
from fluxq.workers.bfl.responses import Status
from tests.support.env import KEY

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


def test_a_quote_posts_the_shape_as_bfls_sdk_does_and_reads_its_cost() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"cost": 7.5})

    assert make_client(handler).quote("flux-2-max", 1024, 768, [(1024, 1024)]) == 7.5
    assert seen[0].method == "POST"
    assert seen[0].url == "https://api.bfl.ai/v1/pricing"
    assert seen[0].headers["x-key"] == KEY
    assert seen[0].headers["content-type"] == "application/json"
    assert json.loads(seen[0].content) == {
        "model": "flux-2-max", "width": 1024, "height": 768,
        "input_images": [{"width": 1024, "height": 1024}],
    }  # fmt: skip


@pytest.mark.parametrize("body", [{"price": 3}, {"cost": "3"}, {"cost": True}, {"cost": -1}, [3]])
def test_a_quote_answered_without_a_usable_cost_is_unexpected(body: object) -> None:
    with pytest.raises(UnexpectedResponse, match="pricing answered without a cost"):
        make_client(answer(200, body)).quote("flux-2-pro", 1024, 1024)


def test_a_404_quote_is_none_and_other_refusals_raise_as_everywhere() -> None:
    assert make_client(answer(404, {"detail": "Not Found"})).quote("flux-2-pro", 64, 64) is None
    with pytest.raises(NotAuthorised):
        make_client(answer(403, {"detail": "Not authenticated"})).quote("flux-2-pro", 64, 64)
    with pytest.raises(ReadFailed):
        make_client(raising(httpx.ReadTimeout("slow"))).quote("flux-2-pro", 64, 64)


def test_a_cookie_a_host_sets_is_never_kept_nor_sent_on() -> None:
    seen: list[httpx.Request] = []
    polling_url = "https://api.eu2.bfl.ai/v1/get_result?id=abc"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        cookie = {"set-cookie": "session=tracked; Domain=bfl.ai; Path=/"}
        if request.method == "POST":
            return httpx.Response(
                200, headers=cookie, json={"id": "abc", "polling_url": polling_url}
            )
        return httpx.Response(200, headers=cookie, json={"id": "abc", "status": "Pending"})

    client = make_client(handler)
    client.submit_json("flux-dev", {"prompt": "a cat"})
    client.get_result(polling_url)
    client.get_result(polling_url)
    assert len(seen) == 3
    assert [request.headers.get("cookie") for request in seen] == [None, None, None]
    # (A plain httpx client would have sent it back: the jar is what makes the difference.)
    plain = httpx.Client(transport=httpx.MockTransport(handler))
    plain.post("https://api.bfl.ai/v1/flux-dev", json={})
    plain.get(polling_url)
    assert seen[-1].headers.get("cookie") == "session=tracked"


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
    from fluxq.config.catalog import validate_request

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t", "polling_url": "https://api.bfl.ai/x?id=t"})

    request = validate_request("flux-pro-1.1", {"prompt": "a fox", "width": 512, "seed": 3})
    make_client(handler).submit("flux-pro-1.1", request)
    assert json.loads(seen[0].content) == {"prompt": "a fox", "width": 512, "seed": 3}
    assert seen[0].url.path == "/v1/flux-pro-1.1"


def test_submit_to_an_unknown_endpoint_is_refused_before_any_request() -> None:
    from fluxq.config.catalog import validate_request

    request = validate_request("flux-dev", {"prompt": "p"})
    with pytest.raises(InvalidRequest, match="endpoint"):
        make_client(answer(200, {})).submit("flux-nope", request)


# --- requests refused before they leave -------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        httpx.LocalProtocolError(f"Illegal header value b'{KEY}\\n'"),
        httpx.UnsupportedProtocol(f"Request URL is missing a protocol: {KEY}"),
        httpx.InvalidURL(f"Invalid non-printable ASCII character in URL {KEY}"),
        httpx.ProxyError("proxy refused the tunnel"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_request_refused_before_it_left_is_not_sent_and_never_shows_the_key(
    exc: Exception,
) -> None:
    with pytest.raises(NotSent) as caught:
        make_client(raising(exc)).submit_json("flux-dev", {"prompt": "p"})
    assert not isinstance(caught.value, OutcomeUnknown)
    assert KEY not in str(caught.value)
    with pytest.raises(NotSent):
        make_client(raising(exc)).get_result("https://api.bfl.ai/v1/get_result?id=1")


def test_a_key_with_a_trailing_newline_is_refused_locally_as_not_sent_without_showing_it() -> None:
    # Given a listening loopback socket that never answers and a key that slipped past validation
    import socket

    from pydantic import SecretStr

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        base = f"http://127.0.0.1:{server.getsockname()[1]}"
        valid = Settings(bfl_base_url=base, http_connect_timeout_s=1, http_read_timeout_s=1)
        settings = Settings.model_construct(**{**dict(valid), "bfl_api_key": SecretStr(KEY + "\n")})
        # When the real httpx transport refuses the header before sending
        with BFLClient(settings) as client, pytest.raises(NotSent) as caught:
            client.submit_json("flux-dev", {"prompt": "p"})
    # Then it is safe to resend and the message does not carry the key
    assert KEY not in str(caught.value)
    assert "LocalProtocolError" in str(caught.value)


# --- server text is redacted ------------------------------------------------------------------

HOOK = "hook-secret-abcdef"


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, {"detail": f"key {KEY} is not valid"}, NotAuthorised),
        (401, f"<html>bad key {KEY}</html>", NotAuthorised),
        (
            422,
            {"detail": [{"loc": ["header", "x-key"], "msg": f"bad key {KEY}", "type": "v"}]},
            InvalidRequest,
        ),
        (400, {"detail": {"x-key": KEY, "hook": HOOK}}, InvalidRequest),
        (402, {"detail": f"no credits for {KEY}"}, OutOfCredits),
        (429, {"detail": f"cap reached for {KEY}"}, RateLimited),
        (500, {"detail": f"crashed while handling {KEY} and {HOOK}"}, ServerError),
        (503, f"upstream said {KEY}", ServerError),
        (404, {"detail": f"no such key {KEY}"}, UnexpectedResponse),
    ],
)
def test_server_text_echoing_a_secret_is_redacted_in_the_exception(
    status: int, body: object, error: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    client = make_client(handler, webhook_secret=HOOK)
    with pytest.raises(error) as caught:
        client.submit_json("flux-dev", {"prompt": "p"})
    text = str(caught.value)
    assert KEY not in text
    assert HOOK not in text
    assert "[redacted]" in text
    assert str(status) in text
    if isinstance(caught.value, InvalidRequest):
        assert all(KEY not in e.msg for e in caught.value.errors)


def test_a_key_echoed_url_quoted_or_in_a_huge_body_is_redacted_and_bounded() -> None:
    from urllib.parse import quote

    odd_key = "key/with+chars=1234"
    settings = Settings(bfl_api_key=odd_key)  # type: ignore[arg-type]
    body = f"{quote(odd_key, safe='')} " * 3 + "x" * 100_000
    client = BFLClient(
        settings, transport=httpx.MockTransport(lambda r: httpx.Response(500, text=body))
    )
    with pytest.raises(ServerError) as caught:
        client.credits()
    text = str(caught.value)
    assert quote(odd_key, safe="") not in text
    assert "[redacted]" in text
    assert len(text) < 1000


@pytest.mark.parametrize(
    ("call", "body"),
    [
        ("submit", f"not json {KEY}"),
        ("submit", {"no_id": KEY}),
        ("poll", [KEY]),
        ("credits", {"credits": KEY}),
    ],
)
def test_unreadable_answers_echoing_the_key_are_redacted(call: str, body: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(200, text=body)
        return httpx.Response(200, json=body)

    client = make_client(handler)
    calls: dict[str, Callable[[], object]] = {
        "submit": lambda: client.submit_json("flux-dev", {"prompt": "p"}),
        "poll": lambda: client.get_result("https://api.bfl.ai/v1/get_result?id=1"),
        "credits": client.credits,
    }
    # A submit's 2xx that cannot be read is an unknown outcome (a task may exist), the others
    # are unexpected answers: either way the key is redacted.
    expected = OutcomeUnknown if call == "submit" else UnexpectedResponse
    with pytest.raises(expected) as caught:
        calls[call]()
    assert KEY not in str(caught.value)
    assert "[redacted]" in str(caught.value)


@pytest.mark.parametrize("read_only", [True, False])
def test_an_httpx_error_quoting_the_key_is_redacted(read_only: bool) -> None:
    client = make_client(raising(httpx.ReadError(f"reset while sending x-key: {KEY}")))
    call: Callable[[], object] = (
        client.credits if read_only else lambda: client.submit_json("flux-dev", {"prompt": "p"})
    )
    with pytest.raises(ReadFailed if read_only else OutcomeUnknown) as caught:
        call()
    assert KEY not in str(caught.value)
    assert "[redacted]" in str(caught.value)


def test_a_failed_results_details_and_reasons_are_redacted() -> None:
    body = {
        "id": "t",
        "status": "Error",
        "details": {"error": f"bad key {KEY}", "nested": [{"why": KEY}]},
    }
    result = make_client(answer(200, body)).get_result("https://api.bfl.ai/v1/get_result?id=t")
    assert KEY not in str(result.details)
    assert "[redacted]" in str(result.details)


# --- download limits --------------------------------------------------------------------------

DELIVERY = "https://delivery-eu1.bfl.ai/a.png?sig=x"


class Endless(httpx.SyncByteStream):
    """A body that keeps coming (bounded only so a broken client cannot hang the test run)."""

    def __init__(self, chunk: int = 64 * 1024, limit: int = 8 * 1024 * 1024) -> None:
        self.chunk = chunk
        self.limit = limit
        self.sent = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        while self.sent < self.limit:
            self.sent += self.chunk
            yield b"\0" * self.chunk


def test_a_content_length_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    stream = Endless()
    headers = {"content-length": str(2 * 1024**3), "content-type": "image/png"}
    client = make_client(lambda r: httpx.Response(200, headers=headers, stream=stream))
    target = tmp_path / "big.png"
    with pytest.raises(DownloadFailed, match="larger than FLUXQ_DOWNLOAD_MAX_BYTES") as caught:
        client.download(DELIVERY, target)
    assert caught.value.status_code == 200
    assert not caught.value.expired
    assert stream.sent == 0
    assert not target.exists()


def test_an_endless_body_stops_at_the_cap_and_leaves_no_file(tmp_path: Path) -> None:
    stream = Endless()
    client = make_client(
        lambda r: httpx.Response(200, stream=stream), download_max_bytes=1024 * 1024
    )
    target = tmp_path / "endless.png"
    with pytest.raises(DownloadFailed, match="larger than FLUXQ_DOWNLOAD_MAX_BYTES") as caught:
        client.download(DELIVERY, target)
    assert isinstance(caught.value, JobFailed)
    assert stream.sent <= 1024 * 1024 + 2 * stream.chunk
    assert not target.exists()


def test_a_body_of_exactly_the_cap_is_accepted(tmp_path: Path) -> None:
    payload = b"\x89PNG" + b"\0" * 1020
    client = make_client(lambda r: httpx.Response(200, content=payload), download_max_bytes=1024)
    done = client.download(DELIVERY, tmp_path / "ok.png")
    assert done.size_bytes == 1024


def test_a_trickling_delivery_host_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    # Given a fake clock that advances 5 s per chunk, as a host sending one byte every 5 s would
    now = [1000.0]

    class Trickle(httpx.SyncByteStream):
        sent = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            while self.sent < 1000:
                self.sent += 1
                now[0] += 5.0
                yield b"x"

    stream = Trickle()
    settings = Settings(bfl_api_key=KEY, download_deadline_s=60)  # type: ignore[arg-type]
    client = BFLClient(
        settings,
        transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=stream)),
        clock=lambda: now[0],
    )
    target = tmp_path / "slow.png"
    # When it downloads, Then it gives up after 60 s as a retryable read failure, leaving no file
    with pytest.raises(ReadFailed, match="FLUXQ_DOWNLOAD_DEADLINE_S"):
        client.download(DELIVERY, target)
    assert stream.sent <= 13
    assert not target.exists()


def test_a_real_slow_body_is_cut_off_at_a_tiny_deadline(tmp_path: Path) -> None:
    import time

    def slow() -> object:
        for _ in range(10):
            time.sleep(0.05)
            yield b"x"

    class Slow(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from slow()  # type: ignore[misc]

    client = make_client(lambda r: httpx.Response(200, stream=Slow()), download_deadline_s=0.12)
    target = tmp_path / "slow.png"
    started = time.monotonic()
    with pytest.raises(ReadFailed):
        client.download(DELIVERY, target)
    assert time.monotonic() - started < 0.4
    assert not target.exists()


# --- unparseable polling URLs -----------------------------------------------------------------

NASTY_POLLING_URLS: list[object] = [
    "http://[::1",
    "https://[::1",
    "https://host:99999/x",
    "https://api.bfl.ai:99999/x",
    "http://exa mple.com",
    "https://exa mple.bfl.ai/x",
    "https://api.bfl.ai\x00.evil.example/",
    "https://api.bfl.ai\t/",
    "https://evil.example\\@api.bfl.ai/",
    "https://evil.example#@api.bfl.ai/",
    "https://api.bfl.ai@evil.example/",
    "https://%61pi.bfl.ai/",
    "https://é.bfl.ai/",
    "https://api.bfl.ai/" + "a" * 5000,
    "y" * 5000,
    "",
    None,
    42,
    b"https://api.bfl.ai/v1/get_result?id=1",
]


@pytest.mark.parametrize("url", NASTY_POLLING_URLS, ids=lambda u: repr(u)[:40])
def test_an_unparseable_polling_url_is_refused_as_disallowed(url: object) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t", "status": "Pending"})

    with pytest.raises(DisallowedURL):
        make_client(handler).get_result(url)  # type: ignore[arg-type]
    assert seen == []


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ALLOWED_HOSTS = st.sampled_from(["api.bfl.ai", "api.eu2.bfl.ai", "delivery-eu1.bfl.ai", "bfl.ai"])


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.sampled_from([u for u in NASTY_POLLING_URLS if isinstance(u, str)]),
        st.builds(lambda s: "https://" + s, st.text()),
        st.builds(lambda h, s: f"https://{h}{s}", ALLOWED_HOSTS, st.text()),
        st.builds(lambda s, h: f"https://{s}{h}/v1", st.text(), ALLOWED_HOSTS),
        st.builds(lambda h, s: f"https://{h}/{s}", ALLOWED_HOSTS, st.text(alphabet=PRINTABLE)),
        st.builds(lambda s, h: f"https://{s}{h}/", st.text(alphabet=PRINTABLE), ALLOWED_HOSTS),
    )
)
def test_get_result_only_ever_requests_allowed_hosts(url: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t", "status": "Pending"})

    client = make_client(handler)
    try:
        client.get_result(url)
    except (DisallowedURL, UnexpectedResponse):
        assert seen == []
    else:
        assert len(seen) == 1
        sent = seen[0].url
        assert sent.scheme == "https"
        assert sent.host == "bfl.ai" or sent.host.endswith((".bfl.ai", ".bfl.ml"))
        assert client._settings.url_allowed(str(sent))
    finally:
        client.close()


@pytest.mark.parametrize(
    "polling_url", [123, ["https://api.bfl.ai/x"], {"u": 1}, "http://[::1", "not a url", "https://"]
)
def test_a_submit_answer_with_an_unusable_polling_url_is_an_unknown_outcome(
    polling_url: object,
) -> None:
    # A 200 with a task id: BFL created the task, so the job must not fail and free its slot
    client = make_client(answer(200, {"id": "t", "polling_url": polling_url}))
    with pytest.raises(OutcomeUnknown, match="polling_url"):
        client.submit_json("flux-dev", {"prompt": "p"})


def test_a_body_that_cannot_be_encoded_is_refused_before_anything_is_sent() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"id": "t"})

    client = make_client(handler)
    with pytest.raises(InvalidRequest) as caught:
        client.submit_json("flux-dev", {"prompt": "ok", "extra": {"list": ["fine", "a \ud800"]}})
    assert caught.value.errors[0].field == "extra.list.1"
    assert sent == []
