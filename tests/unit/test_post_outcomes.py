"""What a failed POST proves: every row of the table in workers/bfl/outcomes.py, from the
client's real translation of an HTTP answer or a transport error, and the doubtful hold's bound."""

from __future__ import annotations

import httpx
import pytest

from fluxq.config.errors import FluxqError, InvalidRequest
from fluxq.config.settings import Settings
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.bfl.outcomes import HOLD_QUANTILE, PostOutcome, doubt_hold_s, post_outcome
from fluxq.workers.poll_schedule import LogNormal
from tests.support.env import KEY


def outcome_of(handler: object, body: dict[str, object] | None = None) -> PostOutcome:
    settings = Settings(bfl_api_key=KEY)  # type: ignore[arg-type]
    client = BFLClient(settings, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    try:
        client.submit_json("flux-dev", body or {"prompt": "a heron"})
    except FluxqError as exc:
        return post_outcome(exc)
    finally:
        client.close()
    raise AssertionError("the submit did not fail")


def answering(status: int, body: object = None) -> object:
    return lambda request: httpx.Response(status, json=body or {"detail": "x"})


def raising(exc: Exception) -> object:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, PostOutcome.RATE_LIMITED),
        (503, PostOutcome.UNAVAILABLE),
        (402, PostOutcome.STOPPED),
        (401, PostOutcome.STOPPED),
        (403, PostOutcome.STOPPED),
        (400, PostOutcome.REJECTED),
        (422, PostOutcome.REJECTED),
        (404, PostOutcome.REJECTED),
        (500, PostOutcome.UNKNOWN),
        (502, PostOutcome.UNKNOWN),
        (504, PostOutcome.UNKNOWN),
        (599, PostOutcome.UNKNOWN),
    ],
)
def test_each_status_proves_what_the_table_says(status: int, expected: PostOutcome) -> None:
    assert outcome_of(answering(status)) is expected


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.PoolTimeout("pool"),
        httpx.ProxyError("proxy said no"),
        httpx.LocalProtocolError("illegal header"),
        httpx.UnsupportedProtocol("ftp"),
    ],
)
def test_an_error_before_the_first_byte_is_a_refusal_never_uncertain(error: Exception) -> None:
    assert outcome_of(raising(error)) is PostOutcome.UNAVAILABLE


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("slow answer"),
        httpx.WriteTimeout("slow send"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("dropped mid-answer"),
    ],
)
def test_no_answer_after_sending_is_unknown(error: Exception) -> None:
    assert outcome_of(raising(error)) is PostOutcome.UNKNOWN


@pytest.mark.parametrize("body", [{"no_id": 1}, {"id": "t", "polling_url": 7}])
def test_a_2xx_that_cannot_be_read_is_unknown_a_task_may_exist(body: object) -> None:
    assert outcome_of(answering(200, body)) is PostOutcome.UNKNOWN


def test_a_body_that_cannot_be_encoded_is_rejected_before_sending() -> None:
    contacted: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        contacted.append(request)
        return httpx.Response(200, json={"id": "t"})

    assert outcome_of(handler, {"prompt": "a heron \ud800"}) is PostOutcome.REJECTED
    assert contacted == []
    with pytest.raises(InvalidRequest) as caught:
        BFLClient(Settings(bfl_api_key=KEY)).submit_json("flux-dev", {"prompt": "\udfff"})  # type: ignore[arg-type]
    assert caught.value.errors[0].field == "prompt"


def test_the_hold_covers_the_endpoints_slow_tail_with_a_factor() -> None:
    model = LogNormal.from_median(5.0, 0.4)
    hold = doubt_hold_s(model, factor=2.0, floor_s=15.0, ceiling_s=900.0)
    assert hold == pytest.approx(2.0 * model.quantile(HOLD_QUANTILE))
    assert 24.0 < hold < 27.0  # 2 x 12.7 s for a 5 s model: seconds, not the 900 s deadline


def test_the_hold_has_a_floor_for_fast_models_and_never_passes_the_poll_deadline() -> None:
    fast = LogNormal.from_median(0.5, 0.3)
    assert doubt_hold_s(fast, factor=2.0, floor_s=15.0, ceiling_s=900.0) == 15.0
    slow = LogNormal.from_median(600.0, 0.8)
    assert doubt_hold_s(slow, factor=2.0, floor_s=15.0, ceiling_s=900.0) == 900.0
