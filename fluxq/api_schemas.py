"""JSON Schemas of what ``fluxq api``'s own code checks, for its OpenAPI document.

A job's body (``POST /v1/jobs``) and a batch's lines (``POST /v1/batches``) are checked by
``tasks.enqueue`` and ``tasks.batchfile``, not by FastAPI: their schemas are built here from the
same request models, catalog and naming rules, so the document states what the code enforces
(``tests/integration/test_api_contract.py`` runs schemathesis to hold the two together).

Where the code checks something JSON Schema cannot say, the schema says a safe part of it and
the description the rest: an aspect ratio is a ratio of whole numbers (the schema lists those
with terms up to ASPECT_TERM_MAX), a FLUX.2 size is bounded by its area (the schema bounds each
side so that every pair it allows fits), file names are unique in a batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from fluxq.batch_submit import MAX_BATCH_CHARS
from fluxq.config.catalog import RESERVED_FIELD_TEXT, Catalog
from fluxq.config.requests import (
    FLUX2_MAX_MEGAPIXELS,
    FLUX2_SIDE_MULTIPLE_PX,
    MAX_ASPECT_RATIO,
    MIN_ASPECT_RATIO,
    PIXELS_PER_MEGAPIXEL,
    RESERVED_FIELDS,
    VIDEO_MODE_FIELDS,
    VIDEO_REQUIRED_FIELDS,
    Flux3VideoInputs,
    OpenRequest,
)
from fluxq.tasks.batches import ReportRow
from fluxq.tasks.batchfile import LINE_FIELDS, MAX_LINE_ID_CHARS
from fluxq.tasks.notify import MAX_WEBHOOK_URL_CHARS
from fluxq.tasks.schema import EXAMPLE
from fluxq.workers.files import ID_PATTERN, MAX_NAME_CHARS, NAME_PATTERN, SECRET_FIELDS
from fluxq.workers.state.jobs import DEFAULT_PRIORITY, MAX_PRIORITY

COMPONENTS = "#/components/schemas/"

JOB_EXAMPLE: dict[str, Any] = EXAMPLE
"""A job's body (``fluxq.enqueue``'s example: the same fields, the same checks)."""

BATCH_EXAMPLE: list[dict[str, Any]] = [
    {"id": "heron", "endpoint": "flux-pro-1.1", "prompt": "a heron at dawn", "seed": 1},
    {"id": "fox", "endpoint": "flux-dev", "prompt": "a fox in the snow", "width": 512},
]
"""A batch file's lines, as the array its schema describes."""

ASPECT_TERM_MAX = 99
"""The largest term of a ``W:H`` the schema lists; the code takes any whole terms in range."""

_URL_CHARS = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})"
HTTP_URL_PATTERN = (
    r"^https?://(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(?::[1-9][0-9]{0,3})?"
    rf"(?:/{_URL_CHARS}*)?(?:\?(?:{_URL_CHARS}|\?)*)?$"
)
"""An http(s) URL of a host name (its last label starts with a letter), a port 1-9999, and a
path and query of the characters a URI allows: a safe part of what is accepted (httpx and
pydantic parse the URL, and take any valid one)."""


def anchored(pattern: str) -> str:
    """A Python pattern used with ``fullmatch`` as a JSON Schema ``pattern`` (which searches)."""
    return f"^(?:{pattern})$"


ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": anchored(ID_PATTERN.pattern),
    "minLength": 1,
    "maxLength": MAX_NAME_CHARS,
}
"""A job id or a batch name (``workers.files.ID_PATTERN``)."""

BATCH_NAME_SCHEMA: dict[str, Any] = ID_SCHEMA | {"maxLength": MAX_BATCH_CHARS}
"""The name of a batch of lines (``fluxq.batch_submit.name_problem``): its job ids are
``<batch>.<line id>``."""

NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": anchored(NAME_PATTERN.pattern),
    "minLength": 1,
    "maxLength": MAX_NAME_CHARS,
}
"""A job's file name (``workers.files.NAME_PATTERN``)."""


def keywords(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` but its type: what a FastAPI parameter's ``json_schema_extra`` adds to the
    schema its annotation gives."""
    return {key: value for key, value in schema.items() if key != "type"}


WEBHOOK_URL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "uri",
    "pattern": HTTP_URL_PATTERN,
    "minLength": 1,
    "maxLength": MAX_WEBHOOK_URL_CHARS,
}
"""An absolute http(s) URL (``tasks.notify.webhook_url_problem``)."""


WHOLE_NUMBER: dict[str, Any] = {
    "type": "integer",
    "minimum": 0,
    "description": "Taken as its digits (as a CSV cell is).",
}
"""A batch line's id or name may be a whole number: its digits are the text."""


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (null means "not given"), its description kept at the top."""
    inner = {k: v for k, v in schema.items() if k != "description"}
    described = {"description": schema["description"]} if "description" in schema else {}
    return {"anyOf": [inner, {"type": "null"}], **described}


# --- aspect ratios ------------------------------------------------------------------------------


def _digits(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _numbers(low: int, high: int) -> list[str]:
    """Regex alternatives matching the whole numbers low..high (1..99, no leading zeros)."""
    assert 1 <= low <= high <= 99
    parts = []
    if low <= 9:
        parts.append(_digits(low, min(high, 9)))
        low = 10
    while low <= high:
        tens, last = divmod(low, 10)
        top = min(high, tens * 10 + 9)
        parts.append(f"{tens}{_digits(last, top % 10)}")
        low = top + 1
    return parts


def aspect_ratio_pattern(term_max: int = ASPECT_TERM_MAX) -> str:
    """``W:H`` with terms 1..term_max whose ratio is within MIN_ASPECT_RATIO..MAX_ASPECT_RATIO."""
    low, high = Fraction(*MIN_ASPECT_RATIO), Fraction(*MAX_ASPECT_RATIO)
    branches = []
    for width in range(1, term_max + 1):
        # width / height within low..high: height within width / high .. width / low
        least = max(1, math.ceil(width / high))
        most = min(term_max, math.floor(width / low))
        if least <= most:
            branches.append(f"{width}:(?:{'|'.join(_numbers(least, most))})")
    return f"^(?:{'|'.join(branches)})$"


# --- request bodies ------------------------------------------------------------------------------


def flux2_side_max() -> int:
    """The largest FLUX.2 side with which any other side the schema allows stays in the area."""
    side = math.isqrt(int(FLUX2_MAX_MEGAPIXELS * PIXELS_PER_MEGAPIXEL))
    return side - side % FLUX2_SIDE_MULTIPLE_PX


def _strings(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The string branches of a property's schema (one of them when it is nullable)."""
    return [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") == "string"]


def aspect_ratio_schema() -> dict[str, Any]:
    """``AspectRatio`` (a component: its pattern is long)."""
    return {
        "type": "string",
        "pattern": aspect_ratio_pattern(),
        "description": "W:H between {}:{} and {}:{}: this schema lists those with terms up to "
        "{}; larger whole terms in range are accepted too.".format(
            *MIN_ASPECT_RATIO, *MAX_ASPECT_RATIO, ASPECT_TERM_MAX
        ),
    }


def _aspect_ratio(prop: dict[str, Any]) -> None:
    if "anyOf" in prop:
        prop["anyOf"] = [
            {"$ref": COMPONENTS + "AspectRatio"} if b.get("type") == "string" else b
            for b in prop["anyOf"]
        ]
    else:
        del prop["type"]
        prop["$ref"] = COMPONENTS + "AspectRatio"


def _flux2_side(prop: dict[str, Any]) -> None:
    branches = prop.get("anyOf", [prop])
    side = next(branch for branch in branches if branch.get("type") == "integer")
    side["maximum"] = flux2_side_max()
    prop["anyOf"] = [{"const": 0}, *branches]
    prop["description"] = (
        f"0 or null: the server picks 1024. Width x height is at most {FLUX2_MAX_MEGAPIXELS:g} "
        f"MP: this schema bounds each side at {flux2_side_max()} (a longer side with a shorter "
        "other is accepted too)."
    )


def _url(prop: dict[str, Any]) -> None:
    for branch in _strings(prop):
        branch.update(WEBHOOK_URL_SCHEMA)


UNTIMED_KEYFRAMES_MAX = 2
"""The keyframe images the published schema lists without times: 1 or 2 (3-10 are waypoints,
which need an explicit duration; the API takes them, the schema does not say so)."""


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    kept = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**branches[0], **kept} if len(branches) == 1 else {**kept, "anyOf": branches}


def _video_modes(schema: dict[str, Any]) -> dict[str, Any]:
    """flux-3-video's schema as one object per mode, since its validators check each field
    against the mode: only the mode's fields, those it needs not null. Two rules no schema of
    independent fields says are left out by narrowing: ``batch`` (it needs ``draft: true``),
    timed keyframes (their times must increase) and 3-10 waypoints (they need an explicit
    duration), so whatever this schema allows, the API takes."""
    properties: dict[str, Any] = schema["properties"]
    variants = []
    for mode, fields in VIDEO_MODE_FIELDS.items():
        required = VIDEO_REQUIRED_FIELDS[mode]
        own: dict[str, Any] = {"mode": {"const": mode}}
        for name in sorted((fields - {"batch"}) | set(SECRET_FIELDS) | {"webhook_url"}):
            prop = copy.deepcopy(properties[name])
            if name == "keyframes":
                untimed = [b for b in prop["anyOf"] if b.get("items", {}).get("type") != "array"]
                for branch in untimed:
                    if branch.get("type") == "array":
                        branch.update(minItems=1, maxItems=UNTIMED_KEYFRAMES_MAX)
                prop["anyOf"] = untimed
            own[name] = _without_null(prop) if name in required else prop
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["mode", *required],
                "properties": own,
            }
        )
    return {
        "title": schema.get("title"),
        "description": schema.get("description"),
        "oneOf": variants,
    }


def _refine(model: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
    """A request model's JSON Schema with what its validators check besides its field types."""
    properties: dict[str, Any] = schema.get("properties", {})
    for field in SECRET_FIELDS:
        if field in properties:
            properties[field] = {
                "type": "null",
                "description": "Refused: fluxq signs its own webhooks (FLUXQ_WEBHOOK_SECRET).",
            }
    if model is OpenRequest:  # any field but those fluxq sets itself
        for field in RESERVED_FIELDS:
            properties[field] = {"not": {}, "description": f"Refused: {RESERVED_FIELD_TEXT}."}
        schema["properties"] = properties
    for name, prop in properties.items():
        if name == "aspect_ratio" and "enum" not in prop:  # a video's is a list of ratios
            _aspect_ratio(prop)
        elif name in ("width", "height") and model.model_fields[name].default == 0:
            _flux2_side(prop)  # FLUX.2: 0 means the server picks
        elif name == "webhook_url":
            _url(prop)
    if model is Flux3VideoInputs:
        return _video_modes(schema)
    return schema


@dataclass(frozen=True)
class _Group:
    """Endpoints that take one request model."""

    model: type[BaseModel]
    endpoints: tuple[str, ...]


def _groups(catalog: Catalog) -> list[_Group]:
    by_model: dict[type[BaseModel], list[str]] = {}
    for endpoint, spec in sorted(catalog.items()):
        by_model.setdefault(spec.request_model, []).append(endpoint)
    return [_Group(m, tuple(e)) for m, e in sorted(by_model.items(), key=lambda i: i[0].__name__)]


def request_schemas(catalog: Catalog) -> dict[str, Any]:
    """Every request model's refined schema, by model name (OpenAPI components)."""
    models = [group.model for group in _groups(catalog)]
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template=COMPONENTS + "{model}"
    )
    defs: dict[str, Any] = top.get("$defs", {})
    for model in models:
        defs[model.__name__] = _refine(model, defs[model.__name__])
    return dict(sorted(defs.items()))


def _job_options() -> dict[str, Any]:
    return {
        "job_id": _nullable(
            ID_SCHEMA | {"description": "Your id (default a new one): repeating it answers 200."}
        ),
        "batch": _nullable(ID_SCHEMA | {"description": 'Default "default".'}),
        "name": _nullable(
            NAME_SCHEMA
            | {"description": "The file stem, unique in its batch (any case); default the id."}
        ),
        "priority": _nullable(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_PRIORITY,
                "default": DEFAULT_PRIORITY,
                "description": "Higher runs sooner.",
            }
        ),
        "webhook_url": _nullable(
            WEBHOOK_URL_SCHEMA | {"description": "A public address POSTed the outcome."}
        ),
    }


def job_body_schema(catalog: Catalog) -> dict[str, Any]:
    """The body of ``POST /v1/jobs``: an endpoint of ``catalog``, its request, and the options."""
    groups = _groups(catalog)
    return {
        "title": "JobIn",
        "type": "object",
        "required": ["endpoint", "request"],
        "additionalProperties": False,
        "properties": {
            "endpoint": {"enum": sorted(catalog), "description": "The BFL endpoint."},
            "request": {"type": "object", "description": "The endpoint's BFL request body."},
            **_job_options(),
        },
        "oneOf": [
            {
                "properties": {
                    "endpoint": {"enum": list(group.endpoints)},
                    "request": {"$ref": COMPONENTS + group.model.__name__},
                }
            }
            for group in groups
        ],
        "examples": [JOB_EXAMPLE],
    }


def _line_schema(group: _Group, request: dict[str, Any]) -> dict[str, Any]:
    line = copy.deepcopy(request)
    line["title"] = f"{group.model.__name__}Line"
    own = {
        "id": _nullable(
            {
                "anyOf": [ID_SCHEMA | {"maxLength": MAX_LINE_ID_CHARS}, WHOLE_NUMBER],
                "description": "The line's id, unique in the file: its job is <batch>.<id>; "
                "default a digest of the endpoint and request.",
            }
        ),
        "name": _nullable(
            {
                "anyOf": [NAME_SCHEMA, WHOLE_NUMBER],
                "description": "The file stem, unique in the batch (any case); default the id.",
            }
        ),
        "endpoint": {"enum": list(group.endpoints)},
    }
    assert set(own) == set(LINE_FIELDS)
    for variant in line.get("oneOf", [line]):  # a video line: one object per mode
        variant["properties"] = {**own, **variant.get("properties", {})}
        variant["required"] = ["endpoint", *variant.get("required", [])]
    return line


def batch_line_schemas(requests: dict[str, Any], catalog: Catalog) -> dict[str, Any]:
    """The schema of each group's batch line (OpenAPI components): its request's fields, flat,
    with its own id, name and endpoint."""
    return {
        f"{group.model.__name__}Line": _line_schema(group, requests[group.model.__name__])
        for group in _groups(catalog)
    }


def batch_body_schema(catalog: Catalog) -> dict[str, Any]:
    """The lines of ``POST /v1/batches``, as an array (the body holds one per line)."""
    return {
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {
            "oneOf": [
                {"$ref": f"{COMPONENTS}{group.model.__name__}Line"} for group in _groups(catalog)
            ]
        },
        "description": "One JSON object per line (NDJSON): shown here as the array of the lines.",
        "examples": [BATCH_EXAMPLE],
    }


def report_schemas() -> dict[str, Any]:
    """``GET /v1/batches/{name}/report``'s row (OpenAPI components)."""
    return {"ReportRow": TypeAdapter(ReportRow).json_schema()}


def report_body_schema() -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"$ref": COMPONENTS + "ReportRow"},
        "description": "One JSON object per line (NDJSON): shown here as the array of the rows.",
    }


def endpoint_schema(catalog: Catalog) -> dict[str, Any]:
    """``Endpoint``: a name of ``catalog``, fluxq's endpoints and the declared ones."""
    return {"type": "string", "enum": sorted(catalog), "description": "POST /v1/<it> at BFL."}


def components(catalog: Catalog) -> dict[str, Any]:
    """The schemas the bodies above refer to, by name."""
    requests = request_schemas(catalog)
    return {
        **requests,
        **batch_line_schemas(requests, catalog),
        **report_schemas(),
        "AspectRatio": aspect_ratio_schema(),
        "Endpoint": endpoint_schema(catalog),
    }


def add_components(document: dict[str, Any], schemas: Iterable[tuple[str, Any]]) -> None:
    """Add ``schemas`` to an OpenAPI document's components (sorted, as FastAPI writes them)."""
    known = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in schemas:
        assert name not in known or known[name] == schema, f"two schemas named {name}"
        known[name] = schema
    document["components"]["schemas"] = dict(sorted(known.items()))
