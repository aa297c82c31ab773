"""The contract for ``send_task("fluxq.enqueue", kwargs=...)``: a JSON Schema of the kwargs.

Generated from the same pydantic request models and naming rules the task validates with, so a
service in any language can check a message before sending it. ``docs/enqueue.schema.json`` is
this module's output, committed; a test fails when the two drift apart. The task itself stays the
judge: a message the schema accepts is enqueued, one it refuses becomes a failed job naming why.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from fluxq.config.catalog import CATALOG, RESERVED_FIELD_TEXT
from fluxq.config.requests import RESERVED_FIELDS, OpenRequest
from fluxq.tasks.enqueue import MAX_TASK_NAME_CHARS, OPTIONS, TASK_NAME_PATTERN
from fluxq.workers.files import ID_PATTERN, MAX_NAME_CHARS, NAME_PATTERN, SECRET_FIELDS
from fluxq.workers.state.jobs import DEFAULT_PRIORITY, MAX_PRIORITY

SCHEMA_ID = "urn:fluxq:schema:enqueue-kwargs"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

EXAMPLE: dict[str, Any] = {
    "endpoint": "flux-pro-1.1",
    "request": {"prompt": "a heron at dawn, mist over the water", "width": 1024, "height": 768},
    "job_id": "heron-001",
    "batch": "night-42",
    "name": "heron-001",
    "priority": 7,
}
"""A message a service might send; the tests enqueue it for real."""


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null: every option may be sent as null (meaning "not given")."""
    return {"anyOf": [schema, {"type": "null"}]}


def enqueue_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``fluxq.enqueue``'s keyword arguments."""
    models = {spec.request_model for spec in CATALOG.values()}
    _, top = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/$defs/{model}",
    )
    defs: dict[str, Any] = top.get("$defs", {})
    for model in models:
        for field in SECRET_FIELDS:  # refused by fluxq: never stored, fluxq signs its own
            defs[model.__name__].get("properties", {}).pop(field, None)
        if model is OpenRequest:  # any field but those fluxq sets itself
            fields = defs[model.__name__].setdefault("properties", {})
            for field in RESERVED_FIELDS:
                fields[field] = {"not": {}, "description": f"Refused: {RESERVED_FIELD_TEXT}."}
    by_endpoint = [
        {
            "if": {"properties": {"endpoint": {"const": endpoint}}, "required": ["endpoint"]},
            "then": {"properties": {"request": {"$ref": f"#/$defs/{spec.request_model.__name__}"}}},
        }
        for endpoint, spec in sorted(CATALOG.items())
    ]
    properties: dict[str, Any] = {
        "endpoint": {"enum": sorted(CATALOG), "description": "The BFL endpoint: POST /v1/<it>."},
        "request": {
            "type": "object",
            "description": "The endpoint's BFL request body (its schema depends on the endpoint).",
        },
        "job_id": _optional(
            {
                "type": "string",
                "pattern": _anchored(ID_PATTERN.pattern),
                "maxLength": MAX_NAME_CHARS,
                "description": "Your id; default the message's task id. Sending it again is a "
                "no-op.",
            }
        ),
        "batch": _optional(
            {
                "type": "string",
                "pattern": _anchored(ID_PATTERN.pattern),
                "maxLength": MAX_NAME_CHARS,
                "description": "Default 'default'; the directory of the job's file.",
            }
        ),
        "name": _optional(
            {
                "type": "string",
                "pattern": _anchored(NAME_PATTERN.pattern),
                "maxLength": MAX_NAME_CHARS,
                "description": "The file's stem, unique in its batch; default the job id.",
            }
        ),
        "priority": _optional(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_PRIORITY,
                "default": DEFAULT_PRIORITY,
                "description": "Higher runs sooner.",
            }
        ),
        "callback": _optional(
            {
                "type": "object",
                "required": ["task"],
                "properties": {
                    "task": {
                        "type": "string",
                        "pattern": _anchored(TASK_NAME_PATTERN.pattern),
                        "maxLength": MAX_TASK_NAME_CHARS,
                    },
                    "args": {"type": "array"},
                    "kwargs": {"type": "object"},
                    "options": {"type": "object"},
                },
                "description": "A Celery signature (dict form), run with fluxq_job=<outcome>.",
            }
        ),
        "webhook_url": _optional(
            {
                "type": "string",
                "pattern": "^https?://[^/?#]+",
                "description": "A public http(s) address POSTed the outcome, HMAC-signed.",
            }
        ),
    }
    assert set(properties) == {"endpoint", "request", *OPTIONS}
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "fluxq.enqueue keyword arguments",
        "description": "send_task('fluxq.enqueue', queue='fluxq.control', kwargs=<this>). A "
        "refused message becomes a failed job under its job id (or task id), its reason naming "
        "every bad field.",
        "type": "object",
        "required": ["endpoint", "request"],
        "additionalProperties": False,
        "properties": properties,
        "allOf": by_endpoint,
        "examples": [EXAMPLE],
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(enqueue_schema(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
