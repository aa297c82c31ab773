"""The catalog's data (config/endpoints.toml) and request models against BFL's own OpenAPI
document, property by property.

A mismatch means the spec moved or a model drifted; only the named FLUX.2 extras may be stricter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from fluxq.config.catalog import CATALOG
from fluxq.config.requests import FLUX2_SIDE_MULTIPLE_PX, PROMPT_MAX_CHARS

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "bfl" / "openapi.json"
NON_GENERATION_POSTS = {"/v1/delete_finetune"}
LEGACY_ENDPOINTS = {"flux-pro"}
"""In the table, not in the 2026 document: FLUX.1 [pro] of 2024."""
NEWER_TOOLS = {
    "flux-tools/outpainting-v1",
    "flux-tools/erase-v1",
    "flux-tools/deblur-v1",
    "flux-tools/vto-v1",
}
"""In the table, newer than the document (the FLUX Tools, BFL's newer SDK): open previews."""
NEWER_VIDEO = {"flux-3-video"}
"""In the table, newer than the document (BFL's FLUX 3 video reference): a preview whose fields
are documented, so its body is checked (Flux3VideoInputs), with no schema to compare with."""
NEWER_ENDPOINTS = NEWER_TOOLS | NEWER_VIDEO
BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
LENGTH_KEYS = ("minLength", "maxLength")

# The only places our models may be stricter than the spec (see config/requests.py constants).
ALLOWED_STRICTER: dict[tuple[str, str], dict[str, float]] = {
    (schema, side): {"multipleOf": FLUX2_SIDE_MULTIPLE_PX}
    for schema in ("Flux2Inputs", "Flux2FlexInputs", "Flux2KleinInputs")
    for side in ("width", "height")
}

# BFL states no maxLength on any prompt: fluxq's bound (PROMPT_MAX_CHARS) is its only extra length.
ALLOWED_STRICTER_LENGTHS = {"prompt": {"maxLength": PROMPT_MAX_CHARS}}


def load_spec() -> dict[str, Any]:
    """BFL's OpenAPI document; a missing copy fails the run rather than skipping the contract."""
    if not SPEC_PATH.is_file():
        pytest.fail(f"BFL OpenAPI spec not found at {SPEC_PATH}: copy openapi.json there", False)
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


SPEC = load_spec()


def generation_posts() -> list[tuple[str, str]]:
    """(endpoint, schema name) of every POST whose body is a generation schema."""
    posts = []
    for path, item in SPEC["paths"].items():
        if "post" not in item or path in NON_GENERATION_POSTS:
            continue
        ref = item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        posts.append((path.removeprefix("/v1/"), ref.rsplit("/", 1)[-1]))
    return posts


POSTS = generation_posts()


def deref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/...`` or ``#/$defs/...``) within ``root``."""
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def describe(prop: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """A property reduced to what the contract compares, the same way for spec and model."""
    branches = [deref(b, root) for b in prop.get("anyOf", [prop])]
    values = [b for b in branches if b.get("type") != "null"]
    assert len(values) == 1, f"unexpected union {prop}"
    value = values[0]
    default = prop.get("default")
    return {
        "nullable": len(values) < len(branches),
        "type": value.get("type"),
        "enum": value.get("enum"),
        "format": value.get("format"),
        "bounds": {k: value[k] for k in BOUND_KEYS if k in value},
        "lengths": {k: value[k] for k in LENGTH_KEYS if k in value},
        "default": getattr(default, "value", default),
    }


def spec_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = SPEC["components"]["schemas"][name]
    return schema


def model_for(endpoint: str) -> type[BaseModel]:
    return CATALOG[endpoint].request_model


def both(endpoint: str, schema_name: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key`` of each property, spec side and model side, keyed by property name."""
    theirs = spec_schema(schema_name)
    ours = model_for(endpoint).model_json_schema()
    spec_side = {n: describe(p, SPEC)[key] for n, p in theirs["properties"].items()}
    model_side = {n: describe(p, ours)[key] for n, p in ours["properties"].items()}
    return spec_side, model_side


by_post = pytest.mark.parametrize(("endpoint", "schema_name"), POSTS, ids=[e for e, _ in POSTS])


def test_the_spec_lists_the_generation_endpoints() -> None:
    assert len(POSTS) >= 16
    assert ("flux-2-pro", "Flux2Inputs") in POSTS


@by_post
def test_every_spec_endpoint_is_in_the_catalog_with_its_schema(
    endpoint: str, schema_name: str
) -> None:
    assert endpoint in CATALOG
    assert CATALOG[endpoint].schema_name == schema_name


def test_every_catalog_endpoint_but_legacy_flux_pro_and_the_tools_is_in_the_spec() -> None:
    in_spec = {endpoint for endpoint, _ in POSTS}

    assert set(CATALOG) - in_spec == LEGACY_ENDPOINTS | NEWER_ENDPOINTS
    assert all(CATALOG[e].schema_name is None for e in LEGACY_ENDPOINTS | NEWER_ENDPOINTS)


def test_what_the_spec_does_not_have_is_marked_legacy_or_preview_with_an_open_request() -> None:
    assert {CATALOG[e].status for e in LEGACY_ENDPOINTS} == {"legacy"}
    for endpoint in NEWER_TOOLS:
        spec = CATALOG[endpoint]
        # Their fields are UNCONFIRMED: fluxq checks no field of theirs and knows no price
        assert (spec.status, spec.open, spec.price.text()) == ("preview", True, "unpriced")
    for endpoint in NEWER_VIDEO:
        spec = CATALOG[endpoint]
        # Its fields are documented (checked), its price is not
        assert (spec.status, spec.open, spec.price.text()) == ("preview", False, "unpriced")


def test_every_schema_the_table_names_is_the_specs_with_the_model_of_that_name() -> None:
    named = {e: spec.schema_name for e, spec in CATALOG.items() if spec.schema_name is not None}

    assert set(named.values()) <= set(SPEC["components"]["schemas"])
    assert all(CATALOG[e].request_model.__name__ == schema for e, schema in named.items())


@by_post
def test_field_names_equal_the_spec_properties(endpoint: str, schema_name: str) -> None:
    ours = set(model_for(endpoint).model_json_schema()["properties"])

    assert ours == set(spec_schema(schema_name)["properties"])


@by_post
def test_required_fields_equal_the_spec(endpoint: str, schema_name: str) -> None:
    ours = set(model_for(endpoint).model_json_schema().get("required", []))

    assert ours == set(spec_schema(schema_name).get("required", []))


@pytest.mark.parametrize("key", ["default", "nullable", "type", "enum", "format", "lengths"])
@by_post
def test_each_property_matches_the_spec(endpoint: str, schema_name: str, key: str) -> None:
    spec_side, model_side = both(endpoint, schema_name, key)
    if key == "lengths":
        spec_side = {n: v | ALLOWED_STRICTER_LENGTHS.get(n, {}) for n, v in spec_side.items()}

    mismatches = {
        name: {"spec": value, "model": model_side.get(name)}
        for name, value in spec_side.items()
        if model_side.get(name) != value
    }
    assert mismatches == {}


@by_post
def test_bfl_states_no_prompt_length_so_fluxq_bounds_every_prompt(
    endpoint: str, schema_name: str
) -> None:
    spec_side, model_side = both(endpoint, schema_name, "lengths")

    assert spec_side["prompt"] == {}  # a maxLength from BFL would replace fluxq's own bound
    assert model_side["prompt"] == {"maxLength": PROMPT_MAX_CHARS}
    assert CATALOG[endpoint].prompt_max_chars == PROMPT_MAX_CHARS


@by_post
def test_numeric_bounds_equal_the_spec_but_for_named_extras(
    endpoint: str, schema_name: str
) -> None:
    spec_side, model_side = both(endpoint, schema_name, "bounds")

    mismatches = {}
    for name, bounds in spec_side.items():
        expected = bounds | ALLOWED_STRICTER.get((schema_name, name), {})
        if model_side.get(name) != expected:
            mismatches[name] = {"expected": expected, "model": model_side.get(name)}
    assert mismatches == {}


@by_post
def test_output_format_and_webhook_url_are_constrained_as_in_the_spec(
    endpoint: str, schema_name: str
) -> None:
    _, enums = both(endpoint, schema_name, "enum")
    _, lengths = both(endpoint, schema_name, "lengths")

    assert enums["output_format"] == ["jpeg", "png", "webp"]
    assert lengths["webhook_url"] == {"minLength": 1, "maxLength": 2083}
