"""Endpoints fluxq does not know the fields of (the FLUX Tools, a declared endpoint): any JSON
object but the fields fluxq sets itself, on every way in, at their declared price."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fluxq.config.catalog import (
    CATALOG,
    Catalog,
    catalog_with,
    estimate_credits,
    output_format,
    request_to_json,
    result_suffix,
    validate_request,
)
from fluxq.config.errors import InvalidRequest
from fluxq.config.requests import RESERVED_FIELDS
from fluxq.config.settings import Settings, load_settings
from fluxq.tasks.batchfile import Entry, scan_file
from fluxq.tasks.enqueue import enqueue, prepare_job
from fluxq.tasks.save import file_name, url_valid_s
from fluxq.tasks.submit import webhook_fields
from fluxq.testing import InlineDispatcher
from fluxq.workers.files import SECRET_FIELDS
from fluxq.workers.runtime import Runtime, build_runtime
from fluxq.workers.state import keys
from tests.support.api import MakeClient
from tests.support.env import KEY

DECLARED = """
[[endpoint]]
path = "acme/upscale-v2"
cap = "default"
media = "image"
price = { per_image = 3 }

[[endpoint]]
path = "acme/clip"
cap = "acme-gpu"
media = "video/mp4"
url_lifetime_s = 7200
price = "unpriced"
"""
BODY = {"image": "aGVsbG8=", "scale": 4, "mask": None, "options": {"tiles": [1, 2]}}


@pytest.fixture
def endpoints_file(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(DECLARED, encoding="utf-8")
    return path


@pytest.fixture
def catalog(endpoints_file: Path) -> Catalog:
    return catalog_with(endpoints_file)


@pytest.fixture
def rt(redis_url: str, tmp_path: Path, endpoints_file: Path) -> Iterator[Runtime]:
    settings = load_settings(
        _env_file=None, bfl_api_key=KEY, redis_url=redis_url, output_dir=tmp_path / "out",
        endpoints_file=endpoints_file,
    )  # fmt: skip
    runtime = build_runtime(settings, redis_url=redis_url, dispatch=InlineDispatcher())
    yield runtime
    runtime.close()


def refused_fields(rt: Runtime, endpoint: str, request: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(InvalidRequest) as caught:
        prepare_job(rt, endpoint, request)
    return caught.value.fields


# --- the body: any JSON object, sent as given -------------------------------------------------


def test_an_open_body_is_any_json_object_and_is_sent_as_given(catalog: Catalog) -> None:
    request = validate_request("acme/upscale-v2", BODY, catalog=catalog)

    assert request_to_json(request) == BODY  # its null and its nesting too


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"scale": float("nan")}, "not a JSON object: Out of range float values"),
        ({1: "one"}, "a JSON object's keys are strings, not int"),
        (["image"], "expected a JSON object, got list"),
        ({"prompt": 7}, "Input should be a valid string"),
    ],
)
def test_an_open_body_that_is_no_json_object_is_refused_naming_the_body(
    catalog: Catalog, body: Any, why: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request("acme/upscale-v2", body, catalog=catalog)

    assert caught.value.fields in (("<request>",), ("prompt",))  # the body itself, or its prompt
    assert why in str(caught.value)


def test_an_open_bodys_format_is_its_output_format_when_it_names_one(catalog: Catalog) -> None:
    def fmt(body: dict[str, Any]) -> str:
        return output_format(validate_request("acme/upscale-v2", body, catalog=catalog))

    assert fmt({"output_format": "png"}) == "png"
    assert fmt({"output_format": "gif"}) == "jpeg"
    assert fmt({"output_format": 7}) == "jpeg"
    assert fmt({}) == "jpeg"


def test_a_declared_price_is_the_estimate_and_unpriced_is_zero(catalog: Catalog) -> None:
    upscale = validate_request("acme/upscale-v2", BODY, catalog=catalog)
    clip = validate_request("acme/clip", BODY, catalog=catalog)

    assert estimate_credits("acme/upscale-v2", upscale, catalog=catalog) == 3.0
    assert estimate_credits("acme/clip", clip, catalog=catalog) == 0.0
    with pytest.raises(InvalidRequest, match="unknown endpoint 'acme/clip'"):
        estimate_credits("acme/clip", clip)  # fluxq's own catalog does not have it


def test_fluxqs_reserved_fields_are_those_it_sets_and_the_secrets_it_refuses() -> None:
    settings = Settings(
        bfl_webhook_base_url="https://fluxq.example.com",
        bfl_webhook_secret="a-webhook-secret-of-32-characters",  # type: ignore[arg-type]
    )
    sent = webhook_fields(
        SimpleNamespace(settings=settings),  # type: ignore[arg-type]
        SimpleNamespace(job_id="j1", key_label="k"),  # type: ignore[arg-type]
    )

    assert set(sent) == set(RESERVED_FIELDS)
    assert set(SECRET_FIELDS) <= set(RESERVED_FIELDS)


# --- enqueue ----------------------------------------------------------------------------------


def test_a_declared_job_is_enqueued_in_its_cap_class_with_its_body(rt: Runtime) -> None:
    upscale = enqueue(rt, "acme/upscale-v2", BODY, job_id="up", batch="b")
    clip = enqueue(rt, "acme/clip", {"prompt": "a heron"}, job_id="clip", batch="b")

    first, second = rt.store.get(upscale), rt.store.get(clip)
    assert first is not None
    assert second is not None
    assert first.request == BODY
    assert (second.endpoint, second.group) == ("acme/clip", "acme-gpu")
    assert rt.redis.zcard(keys.group_slots(rt.label, "acme-gpu")) == 1  # admitted in its class


@pytest.mark.parametrize(
    ("request_body", "fields"),
    [
        ({"image": "x", "webhook_url": "https://me.example.com/hook"}, ("webhook_url",)),
        ({"image": "x", "webhook_url": None, "webhook_secret": None}, RESERVED_FIELDS),
        ({"webhook_secret": "s3cret"}, ("webhook_secret",)),  # named once, as a secret
    ],
)
def test_an_open_request_holding_a_field_fluxq_sets_is_refused_naming_it(
    rt: Runtime, request_body: dict[str, Any], fields: tuple[str, ...]
) -> None:
    for endpoint in ("acme/upscale-v2", "flux-tools/erase-v1"):
        assert refused_fields(rt, endpoint, request_body) == fields
    assert rt.redis.keys("fluxq:job:*") == []


def test_a_known_endpoint_still_takes_bfls_webhook_url_field(rt: Runtime) -> None:
    request = {"prompt": "p", "webhook_url": "https://me.example.com/hook"}

    assert prepare_job(rt, "flux-dev", request).endpoint == "flux-dev"


def test_without_the_file_a_declared_endpoint_is_unknown(runtime: Runtime) -> None:
    assert refused_fields(runtime, "acme/upscale-v2", BODY) == ("endpoint",)


# --- batch files ------------------------------------------------------------------------------


def test_batch_lines_may_name_declared_endpoints_at_their_price(
    tmp_path: Path, catalog: Catalog
) -> None:
    path = tmp_path / "lines.jsonl"
    lines = [
        {"id": "a", "endpoint": "acme/upscale-v2", **BODY},
        {"id": "b", "endpoint": "acme/clip", "prompt": "a heron"},
        {"id": "c", "endpoint": "flux-tools/erase-v1", "image": "x", "webhook_url": "https://x"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    spool = io.StringIO()

    scan = scan_file(path, endpoint=None, params={}, spool=spool, catalog=catalog)

    entries = [Entry.decode(row) for row in spool.getvalue().splitlines()]
    assert [(e.endpoint, e.credits) for e in entries] == [
        ("acme/upscale-v2", 3.0),
        ("acme/clip", 0),
    ]
    assert json.loads(entries[0].request_json) == BODY
    assert [(e.line, e.field) for e in scan.errors] == [(3, "webhook_url")]
    with pytest.raises(ValueError, match="unknown endpoint 'acme/clip'"):
        scan_file(path, endpoint="acme/clip", params={})  # fluxq's own catalog


def test_a_csv_for_an_open_endpoint_takes_any_column_as_text(
    tmp_path: Path, catalog: Catalog
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,prompt,image,scale\nr1,a fox,aGVsbG8=,4\n", encoding="utf-8")
    spool = io.StringIO()

    scan = scan_file(path, endpoint="acme/upscale-v2", params={}, spool=spool, catalog=catalog)

    assert scan.error_count == 0
    (entry,) = [Entry.decode(row) for row in spool.getvalue().splitlines()]
    assert json.loads(entry.request_json) == {"prompt": "a fox", "image": "aGVsbG8=", "scale": "4"}
    with pytest.raises(ValueError, match="--param webhook_url is not allowed: fluxq sets"):
        scan_file(path, endpoint="acme/upscale-v2", params={"webhook_url": "x"}, catalog=catalog)


# --- the API ----------------------------------------------------------------------------------


def test_the_api_takes_declared_endpoints_and_documents_them(
    make_client: MakeClient, endpoints_file: Path
) -> None:
    client = make_client(endpoints_file=endpoints_file)
    body = {"endpoint": "acme/upscale-v2", "request": BODY, "job_id": "up"}

    created = client.post("/v1/jobs", json=body)
    reserved = client.post(
        "/v1/jobs", json={**body, "job_id": "up2", "request": {"webhook_url": "https://x.test"}}
    )

    assert created.status_code == 201, created.text
    assert reserved.status_code == 422
    assert [e["loc"] for e in reserved.json()["detail"]] == [["body", "request", "webhook_url"]]
    document = client.get("/openapi.json").json()
    assert "acme/clip" in document["components"]["schemas"]["Endpoint"]["enum"]
    job_body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert (
        "acme/upscale-v2"
        in job_body["application/json"]["schema"]["properties"]["endpoint"]["enum"]
    )


# --- saving: the result's file and how long its URL lives -------------------------------------


def test_a_result_is_named_by_its_media_and_never_by_its_endpoint(catalog: Catalog) -> None:
    def job(endpoint: str, url: str | None) -> Any:
        return SimpleNamespace(
            endpoint=endpoint, request={}, sample_url=url, name="heron", job_id="j1"
        )

    assert file_name(job("acme/clip", None), catalog) == "heron.mp4"
    assert file_name(job("acme/upscale-v2", None), catalog) == "heron.jpeg"
    assert file_name(job("flux-tools/erase-v1", "https://d.bfl.ai/x/s.png?sig=1"), catalog) == (
        "heron.png"
    )
    assert result_suffix("acme/clip", {}, catalog=catalog) == "mp4"
    # A worker that lacks the file still names the job's file: from its URL, else as open
    assert file_name(job("acme/upscale-v2", None), CATALOG) == "heron.jpeg"
    assert result_suffix("acme/upscale-v2", {"output_format": "webp"}, catalog=CATALOG) == "webp"


def test_a_download_is_retried_while_the_endpoints_url_lives(endpoints_file: Path) -> None:
    rt = SimpleNamespace(settings=load_settings(_env_file=None, endpoints_file=endpoints_file))

    assert url_valid_s(rt, SimpleNamespace(endpoint="acme/clip")) == 7200  # type: ignore[arg-type]
    assert url_valid_s(rt, SimpleNamespace(endpoint="flux-dev")) == 600  # type: ignore[arg-type]
    assert url_valid_s(rt, SimpleNamespace(endpoint="gone/x")) == 600  # type: ignore[arg-type]
    assert CATALOG["flux-tools/erase-v1"].url_lifetime_s == 600
