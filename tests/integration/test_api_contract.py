"""The published contract is the code: schemathesis against a real ``fluxq api`` process.

The schema is read from the server's own ``/openapi.json`` (behind the token, as a client reads
it) and every operation is exercised with all of schemathesis's default checks: statuses,
content types, response bodies and headers as documented, no 5xx, schema-invalid requests
refused, schema-valid ones accepted, 405 with a full ``Allow``, the token not ignored. Bounded
(a fixed seed, a few examples per operation) so it runs in well under a minute on 2 cores.

``POST /v1/batches`` takes ``application/x-ndjson``: its schema describes the lines (an array of
objects), and the serializer below writes one JSON object per line, as a client sends a file.
Two of its rules tie values JSON Schema cannot tie (its description says them); the hooks below
keep generated cases on the side of them the case means to be on. Everything listens on
127.0.0.1; posted jobs stay queued in the test's own Redis (no worker runs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case, HookContext, SerializationContext
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.schemas import OpenApiSchema

from fluxq.tasks.batchfile import scan_file
from fluxq.workers.files import safe_name
from fluxq.workers.state import keys
from tests.support.api import ApiServer
from tests.support.cluster import Cluster

# ~40 s alone; several times that beside the rest of the suite on 2 cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

TOKEN = "contract-api-token"
SEED = int(os.environ.get("FLUXQ_CONTRACT_SEED", "20240611"))
"""Fixed: the same requests on every run (a failure found once is found again). Set
FLUXQ_CONTRACT_SEED to explore other requests."""
MAX_EXAMPLES = int(os.environ.get("FLUXQ_CONTRACT_EXAMPLES", "12"))
"""Fuzzed examples per operation (the examples and coverage phases add their own); more with
FLUXQ_CONTRACT_EXAMPLES."""
ALIAS_TYPE = "application/jsonl"
"""POST /v1/batches's second media type, read as application/x-ndjson is."""
MAX_TEST_WAIT_S = 0.2
"""A long poll's ``wait_s`` is cut to this: a generated 50 s wait on a queued job would hold the
run for 50 s (the cap itself, MAX_WAIT_S, is covered by the unit tests)."""


@schemathesis.serializer("application/x-ndjson", "application/jsonl")
def ndjson_lines(_ctx: SerializationContext, value: Any) -> bytes:
    """The batch body: one JSON value per line (an array's items), as a JSONL file holds them."""
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


@schemathesis.deserializer("application/x-ndjson")
def ndjson_rows(_ctx: schemathesis.DeserializationContext, response: Any) -> list[Any]:
    """A report: one JSON value per line, read as the array the schema describes."""
    text = response.content.decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _is(ctx: HookContext, method: str, path: str) -> bool:
    operation = ctx.operation
    return operation is not None and (operation.method.upper(), operation.path) == (method, path)


def _positive(case: Case) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def _whole(value: Any) -> Any:
    """A whole float as the integer JSON reads it as."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _same_request(line: dict[str, Any]) -> str:
    """What a line without an id is known by (its id is a digest of its endpoint and request):
    its fields but id and name, nulls dropped, whole floats as integers."""
    fields = {
        key: _whole(value)
        for key, value in line.items()
        if key not in ("id", "name") and value is not None
    }
    return json.dumps(fields, sort_keys=True)


def distinct_lines(lines: list[Any]) -> bool:
    """No two lines share an id, a file name (any case) or, without ids, a request."""
    ids: set[str] = set()
    names: set[str] = set()
    for line in lines:
        if not isinstance(line, dict):
            return True  # not a line at all: the case is refused anyway
        given_id, name = line.get("id"), line.get("name")
        line_id = str(_whole(given_id)) if given_id is not None else _same_request(line)
        stem = safe_name(str(_whole(name))) if name is not None else line_id
        if line_id in ids or stem.lower() in names:
            return False
        ids.add(line_id)
        names.add(stem.lower())
    return True


@schemathesis.hook
def filter_case(ctx: HookContext, case: Case) -> bool:
    if not _is(ctx, "POST", "/v1/batches"):
        return True
    if case.media_type == ALIAS_TYPE and case.meta is not None:
        # The coverage phase walks every keyword of every line schema for each media type:
        # the alias (same route, same code) is left to the fuzzing phase, halving the run.
        return case.meta.phase.name.value != "coverage"
    # A valid batch's lines are distinct (the body's description); JSON Schema's uniqueItems
    # only says whole lines are.
    return not (_positive(case) and isinstance(case.body, list)) or distinct_lines(case.body)


@schemathesis.hook
def map_case(ctx: HookContext, case: Case) -> Case:
    query = case.query if isinstance(case.query, dict) else None
    if query is None:
        return case
    if _is(ctx, "GET", "/v1/jobs/{job_id}"):
        wait_s = query.get("wait_s")
        if isinstance(wait_s, int | float) and not isinstance(wait_s, bool):
            query["wait_s"] = min(wait_s, MAX_TEST_WAIT_S)
    elif _is(ctx, "POST", "/v1/batches") and not _positive(case):
        # A line naming no endpoint takes ?endpoint= (the parameter's description): the case
        # is invalid, as it means to be, only without one.
        lines = case.body if isinstance(case.body, list) else []
        if any(isinstance(line, dict) and line.get("endpoint") is None for line in lines):
            query.pop("endpoint", None)
    return case


@pytest.fixture
def api_schema(make_cluster: Callable[..., Cluster], tmp_path: Path) -> Iterator[OpenApiSchema]:
    """A ``fluxq api`` (token set, its own Redis, no worker) and its schema, read from it."""
    # The API would POST jobs to the simulator itself: off, jobs stay queued (no worker runs).
    cluster = make_cluster(FLUXQ_API_SUBMITS="false")
    # A worker that beats (until long after the test): /readyz is 200, as in service.
    cluster.rt.redis.zadd(keys.WORKERS, {"contract-test:0": time.time() + 3600})
    server = ApiServer(cluster.env | {"FLUXQ_API_TOKEN": TOKEN}, tmp_path)
    try:
        server.wait_up()
        config = SchemathesisConfig.from_dict(
            {
                "seed": SEED,
                "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
                "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
            }
        )
        yield schemathesis.openapi.from_url(
            f"{server.url}/openapi.json",
            config=config,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read and write ``node._nodeid``, which pytest 9.2 no
    longer has (it keeps ``_id``): given here, so its per-operation subtests run and report."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_the_api_does_what_its_openapi_document_says(case: Case) -> None:
    case.call_and_validate(timeout=30)


def test_the_schema_is_read_from_the_server_behind_its_token(api_schema: OpenApiSchema) -> None:
    assert api_schema.location is not None
    assert httpx.get(api_schema.location, timeout=10).status_code == 401


@pytest.mark.parametrize(
    "lines",
    [
        [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "x"}],
        [{"id": "a"}, {"id": "a", "prompt": "y"}],
        [{"id": "a"}, {"name": "A", "prompt": "y"}],
        [{"name": "n."}, {"name": "n", "prompt": "y"}],
        [{"prompt": "x", "seed": None}, {"prompt": "x"}],
        [{"seed": 6.0}, {"seed": 6}],
        [{"id": 7}, {"id": "7", "prompt": "y"}],
        [{"id": 7.0}, {"name": "7", "prompt": "y"}],
        [{"prompt": "x"}, {"prompt": "y"}],
    ],
)
def test_the_hook_takes_lines_as_distinct_as_the_batch_scan_does(
    lines: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    scan = scan_file(path, endpoint="flux-dev", params={}, fmt="jsonl")
    assert distinct_lines(lines) is (scan.error_count == 0), scan.errors
