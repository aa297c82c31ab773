"""The OpenAPI schemas of what the API's code checks itself say no more than the code accepts.

Where a rule cannot be said in JSON Schema (an aspect ratio's range, a FLUX.2 area, what parses
as a URL) the schema says a part of it: every value it allows must be accepted by the code.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import HttpUrl, TypeAdapter

from fluxq.api_schemas import (
    ASPECT_TERM_MAX,
    HTTP_URL_PATTERN,
    aspect_ratio_pattern,
    flux2_side_max,
    job_body_schema,
)
from fluxq.config.catalog import CATALOG, validate_request
from fluxq.config.errors import InvalidRequest
from fluxq.config.requests import FLUX2_MAX_MEGAPIXELS, PIXELS_PER_MEGAPIXEL
from fluxq.tasks.notify import webhook_url_problem

HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def accepted_ratio(ratio: str) -> bool:
    try:
        validate_request("flux-pro-1.1-ultra", {"aspect_ratio": ratio})
    except InvalidRequest:
        return False
    return True


def test_the_aspect_ratio_pattern_is_exactly_the_accepted_ratios_of_small_terms() -> None:
    pattern = re.compile(aspect_ratio_pattern())
    for width in range(0, ASPECT_TERM_MAX + 2):
        for height in range(0, ASPECT_TERM_MAX + 2):
            ratio = f"{width}:{height}"
            small = width <= ASPECT_TERM_MAX and height <= ASPECT_TERM_MAX
            assert bool(pattern.fullmatch(ratio)) == (small and accepted_ratio(ratio)), ratio


@settings(max_examples=300, deadline=None)
@given(st.from_regex(HTTP_URL_PATTERN.removesuffix("$") + r"\Z"))
def test_every_url_the_pattern_allows_is_accepted_as_a_webhook_url(url: str) -> None:
    if len(url) <= 2083:
        assert webhook_url_problem(url) is None
        HTTP_URL.validate_python(url)


@pytest.mark.parametrize("endpoint", ["flux-2-pro", "flux-2-flex", "flux-2-klein-4b"])
def test_every_flux2_size_the_schema_allows_fits_the_area(endpoint: str) -> None:
    side = flux2_side_max()
    assert side * side <= FLUX2_MAX_MEGAPIXELS * PIXELS_PER_MEGAPIXEL
    validate_request(endpoint, {"prompt": "p", "width": side, "height": side})
    validate_request(endpoint, {"prompt": "p", "width": side, "height": 0})


def test_the_job_body_names_every_endpoint_once_with_its_request_model() -> None:
    schema = job_body_schema(CATALOG)
    assert schema["properties"]["endpoint"]["enum"] == sorted(CATALOG)
    named = [e for branch in schema["oneOf"] for e in branch["properties"]["endpoint"]["enum"]]
    assert sorted(named) == sorted(CATALOG)
    for branch in schema["oneOf"]:
        model = branch["properties"]["request"]["$ref"].rsplit("/", 1)[1]
        for endpoint in branch["properties"]["endpoint"]["enum"]:
            assert CATALOG[endpoint].request_model.__name__ == model
