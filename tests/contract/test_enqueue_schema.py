"""The committed JSON Schema of fluxq.enqueue's kwargs: current, valid, and in step with the task.

A service checks its message against ``docs/enqueue.schema.json``; fluxq's own validation stays
the judge. These tests hold the two together on messages both should accept or refuse.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fluxq.config.errors import InvalidRequest
from fluxq.tasks.enqueue import enqueue_message
from fluxq.tasks.schema import EXAMPLE, enqueue_schema, schema_text
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import State

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "enqueue.schema.json"


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(enqueue_schema())


def test_the_committed_schema_is_what_the_code_generates() -> None:
    # Regenerate with: python -m fluxq.tasks.schema > docs/enqueue.schema.json
    assert COMMITTED.read_text(encoding="utf-8") == schema_text()


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(COMMITTED.read_text()))


def test_the_schemas_example_is_enqueued(runtime: Runtime) -> None:
    assert list(validator().iter_errors(EXAMPLE)) == []
    job_id = enqueue_message(runtime, EXAMPLE, message_id="task-1")
    job = runtime.store.get(job_id)
    assert job is not None
    assert job.state in (State.QUEUED, State.ADMITTED)
    assert job.batch == "night-42"


def with_(**changes: Any) -> dict[str, Any]:
    message = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is ...:
            message.pop(key, None)
        else:
            message[key] = value
    return message


ACCEPTED = [
    with_(job_id=None, batch=None, name=None, priority=None),
    with_(endpoint="flux-dev", request={"prompt": "a fox", "seed": 3}),
    with_(endpoint="flux-kontext-max", request={"prompt": "a fox", "aspect_ratio": "16:9"}),
    with_(callback={"task": "myapp.tasks.on_image", "args": [], "kwargs": {"x": 1}}),
    with_(priority=0),
    with_(endpoint="flux-3-video", request={"mode": "t2v", "prompt": "a fox", "duration": 5}),
    with_(
        endpoint="flux-3-video",
        request={"mode": "i2v", "prompt": "a", "keyframes": [[0, "u"], [2, "v"]], "duration": 5},
    ),
]
REFUSED = [
    with_(endpoint="flux-nope"),
    with_(request={"prompt": 3}),
    with_(request={"prompt": "x" * 10_001}),
    with_(request={"prompt": "a", "widht": 1024}),
    with_(priority=10),
    with_(priority="high"),
    with_(job_id="../etc/passwd"),
    with_(batch="night 42"),
    with_(name=".hidden"),
    with_(colour="blue"),
    with_(request=...),
    with_(callback={"args": []}),
    with_(webhook_url="ftp://example.invalid/x"),
    with_(request={"prompt": "a", "webhook_secret": "s3cret"}),
    with_(endpoint="flux-3-video", request={"mode": "t2v", "prompt": "a fox", "seed": 3}),
    with_(endpoint="flux-3-video", request={"mode": "t2v", "prompt": "a fox", "duration": 21}),
    with_(endpoint="flux-3-video", request={"mode": "t2x", "prompt": "a fox"}),
]


@pytest.mark.parametrize("message", ACCEPTED)
def test_messages_the_schema_accepts_fluxq_enqueues(
    runtime: Runtime, message: dict[str, Any]
) -> None:
    assert list(validator().iter_errors(message)) == []
    enqueue_message(runtime, message, message_id="task-accepted")


@pytest.mark.parametrize("message", REFUSED)
def test_messages_the_schema_refuses_fluxq_refuses(
    runtime: Runtime, message: dict[str, Any]
) -> None:
    assert list(validator().iter_errors(message)) != []
    with pytest.raises(InvalidRequest):
        enqueue_message(runtime, message, message_id="task-refused")
