"""A ``/`` in an endpoint (``flux-tools/erase-v1``): the POST goes to the nested URL, and nowhere
else does it open a directory, a path traversal, an escape or a split in a key or a line."""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from fluxq.config.catalog import catalog_with, validate_request
from fluxq.config.endpoint_spec import ENDPOINT_PATTERN
from fluxq.config.errors import InvalidRequest
from fluxq.config.settings import Settings
from fluxq.tasks.batchfile import Entry, scan_file
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.state import histograms, keys
from tests.support.env import KEY

Handler = Callable[[httpx.Request], httpx.Response]
ACCEPTED = {"id": "t1", "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=t1"}


def recording(seen: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ACCEPTED)

    return handler


def client_for(handler: Handler, **overrides: object) -> BFLClient:
    settings = Settings(bfl_api_key=KEY, **overrides)  # type: ignore[arg-type]
    return BFLClient(settings, transport=httpx.MockTransport(handler))


def test_the_bfl_client_posts_a_tool_to_its_nested_url_unescaped() -> None:
    seen: list[httpx.Request] = []

    submitted = client_for(recording(seen)).submit_json("flux-tools/erase-v1", {"image": "x"})

    assert submitted.id == "t1"
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.bfl.ai/v1/flux-tools/erase-v1"
    assert request.url.raw_path == b"/v1/flux-tools/erase-v1"  # no %2F


def test_a_declared_nested_endpoint_is_posted_under_its_base_url(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        '[[endpoint]]\npath = "acme/v2/upscale"\ncap = "default"\nmedia = "image"\n'
        'price = "unpriced"\n',
        encoding="utf-8",
    )
    seen: list[httpx.Request] = []
    client = client_for(recording(seen), bfl_base_url="http://127.0.0.1:9/", endpoints_file=path)
    request = validate_request("acme/v2/upscale", {"image": "x"}, catalog=catalog_with(path))

    client.submit("acme/v2/upscale", request)
    with pytest.raises(InvalidRequest, match="unknown endpoint 'acme/v2/upscale'"):
        client_for(recording(seen)).submit("acme/v2/upscale", request)  # without the file

    assert [str(r.url) for r in seen] == ["http://127.0.0.1:9/v1/acme/v2/upscale"]


@pytest.mark.parametrize(
    "endpoint",
    ["../credits", "flux-tools/../credits", "flux-dev?x=1", "/flux-dev", "flux-dev/", "", "a b"],
)
def test_the_client_refuses_a_path_that_is_no_endpoint_before_sending(endpoint: str) -> None:
    seen: list[httpx.Request] = []

    with pytest.raises(InvalidRequest) as caught:
        client_for(recording(seen)).submit_json(endpoint, {"prompt": "p"})

    assert caught.value.fields == ("endpoint",)
    assert seen == []


@given(st.from_regex(ENDPOINT_PATTERN, fullmatch=True))
def test_an_endpoint_path_never_escapes_never_needs_escaping_and_splits_no_key(text: str) -> None:
    parts = text.split("/")
    assert all(part not in ("", ".", "..") for part in parts)
    assert posixpath.normpath(text) == text
    assert not text.startswith("/")
    assert quote(text, safe="/") == text  # the URL holds it as it is
    assert not set(text) & set(":\t,=?%\\ ")  # no Redis key, spool, CSV or setting separator
    assert text == text.lower()


def test_a_nested_endpoint_survives_a_spool_line_and_a_csv_column(tmp_path: Path) -> None:
    entry = Entry(1, "l1", "erased", "flux-tools/erase-v1", 0.0, '{"image":"x"}')
    assert Entry.decode(entry.encode(), line=1) == entry
    path = tmp_path / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "endpoint", "prompt"])
        writer.writerow(["r1", "flux-tools/deblur-v1", "sharper"])
        writer.writerow(["r2", "flux-dev", "a heron"])
    spool = io.StringIO()

    scan = scan_file(path, endpoint=None, params={}, spool=spool)

    assert scan.error_count == 0
    decoded = [Entry.decode(row) for row in spool.getvalue().splitlines()]
    assert [e.endpoint for e in decoded] == ["flux-tools/deblur-v1", "flux-dev"]
    assert scan.by_endpoint == {"flux-tools/deblur-v1": 1, "flux-dev": 1}


def test_a_nested_endpoint_is_one_redis_key_part_and_one_metric_label(
    redis_client: redis.Redis[str],
) -> None:
    histograms.observe(redis_client, histograms.SUBMIT_TO_READY, "flux-tools/vto-v1", 3.0)

    (found,) = histograms.read(redis_client, histograms.SUBMIT_TO_READY)

    assert found.endpoint == "flux-tools/vto-v1"
    assert keys.latency("flux-tools/vto-v1", "1.0mp") == "fluxq:latency:flux-tools/vto-v1:1.0mp"
    assert redis_client.exists(keys.timings(histograms.SUBMIT_TO_READY, "flux-tools/vto-v1"))
