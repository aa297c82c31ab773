"""The three ways a batch goes in (``fluxq batch submit``, ``fluxq.Client.enqueue_many`` and
``POST /v1/batches``) share ``fluxq.batch_submit.submit_file``: for the same lines they refuse the
same bad lines, count the same, and a resend by any of them adds each line once."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fluxq.api import create_app
from fluxq.batch_submit import MAX_BATCH_CHARS, batch_problems
from fluxq.cli import app as cli_app
from fluxq.client import Client
from fluxq.config.errors import InvalidRequest
from fluxq.config.settings import Settings, load_settings
from tests.support.env import KEY, scrub_env

with warnings.catch_warnings():
    # Starlette 1.x warns that its TestClient on httpx (not httpx2) is deprecated; it works.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ENDPOINT = "flux-pro-1.1"
GOOD = [{"id": f"l{i}", "prompt": f"a heron, take {i}", "width": 512} for i in range(5)]
BAD = [
    GOOD[0],
    {"id": "b1", "prompt": 3},
    GOOD[2],
    {"id": "b2", "prompt": "x", "widht": 2},
    {"id": "l0", "prompt": "the same id again"},
]

Report = tuple[int, int, list[tuple[int, str, str]]]
"""(lines, bad lines, [(line, field, reason)]): what a way in said of a refused file."""
Counts = tuple[int, int, int]
"""(added, already there, conflicts)."""


class WaysIn:
    """The three ways in, on one Redis."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.env = {
            "FLUXQ_REDIS_URL": settings.redis_url or "",
            "BFL_API_KEY": KEY,
            "FLUXQ_OUTPUT_DIR": str(settings.output_dir),
            "COLUMNS": "200",
        }
        self.client = Client(settings)
        self.api = TestClient(create_app(settings), base_url="http://127.0.0.1:8000")
        self.api.__enter__()

    def close(self) -> None:
        self.api.__exit__(None, None, None)
        self.client.close()

    def _file(self, lines: list[dict[str, Any]]) -> Path:
        path = self.tmp_path / "lines.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        return path

    def cli(self, lines: list[dict[str, Any]], batch: str) -> Report | Counts:
        args = ["batch", "submit", str(self._file(lines)), "--endpoint", ENDPOINT, "--name", batch]
        result = CliRunner().invoke(cli_app, args, env=self.env)
        if result.exit_code == 2:
            told = re.search(r"nothing enqueued: (\d+) of (\d+) lines are invalid", result.stderr)
            assert told is not None, result.stderr
            found = re.findall(r"^line (\d+): ([^:]+): (.*)$", result.stderr, re.MULTILINE)
            named = [(int(line), field, reason) for line, field, reason in found]
            return int(told[2]), int(told[1]), named
        assert result.exit_code == 0, result.stdout + result.stderr
        said = re.search(r"added (\d+), already there (\d+) .* conflicts (\d+)", result.stdout)
        assert said is not None, result.stdout
        return int(said[1]), int(said[2]), int(said[3])

    def python(self, lines: list[dict[str, Any]], batch: str) -> Report | Counts:
        refused: InvalidRequest | None = None
        try:
            done = self.client.enqueue_many(ENDPOINT, lines, batch=batch)
        except InvalidRequest as exc:
            refused = exc
        if refused is None:
            return done.added, done.present, len(done.conflicts)
        told = re.match(r"(\d+) of (\d+) requests are invalid", str(refused))
        assert told is not None, str(refused)
        named = [(int(str(e.loc[0]).strip("[]")), e.field.split(".", 1)[1], e.msg)
                 for e in refused.errors]  # fmt: skip
        return int(told[2]), int(told[1]), named

    def http(self, lines: list[dict[str, Any]], batch: str) -> Report | Counts:
        body = self._file(lines).read_bytes()
        answer = self.api.post(
            f"/v1/batches?name={batch}&endpoint={ENDPOINT}",
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        data = answer.json()
        if answer.status_code == 422:
            named = [(p["loc"][1], ".".join(p["loc"][2:]), p["msg"]) for p in data["detail"]]
            return data["lines"], data["invalid"], named
        assert answer.status_code == 201, answer.text
        assert data["lines"] == len(lines)
        return data["added"], data["already_there"], data["conflicts"]


@pytest.fixture
def ways(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WaysIn]:
    scrub_env(monkeypatch, tmp_path)
    settings = load_settings(
        _env_file=None, bfl_api_key=KEY, redis_url=redis_url, output_dir=tmp_path / "out"
    )
    found = WaysIn(settings, tmp_path)
    yield found
    found.close()


def test_a_bad_file_is_refused_alike_by_the_cli_python_and_http(ways: WaysIn) -> None:
    reports = {way: getattr(ways, way)(BAD, f"bad-{way}") for way in ("cli", "python", "http")}
    assert reports["cli"] == reports["python"] == reports["http"], reports
    lines, bad, named = reports["cli"]
    assert (lines, bad) == (5, 3)
    assert [(line, field) for line, field, _ in named] == [(2, "prompt"), (4, "widht"), (5, "id")]
    assert ways.client.runtime.redis.keys("fluxq:batch:bad-*") == []  # nothing enqueued


def test_a_good_file_goes_in_alike_and_a_resend_by_any_way_adds_nothing(ways: WaysIn) -> None:
    for way in ("cli", "python", "http"):
        assert getattr(ways, way)(GOOD, f"good-{way}") == (5, 0, 0), way
    for way in ("cli", "python", "http"):  # one batch: the lines the first way added are there
        expected = (5, 0, 0) if way == "cli" else (0, 5, 0)
        assert getattr(ways, way)(GOOD, "shared") == expected, way


def test_one_set_of_limits_for_every_way_in(ways: WaysIn) -> None:
    long_name = "x" * (MAX_BATCH_CHARS + 1)
    assert [e.loc for e in batch_problems(long_name, priority=10, budget=0)] == [
        ("name",), ("priority",), ("budget",),
    ]  # fmt: skip
    assert batch_problems("x" * MAX_BATCH_CHARS) == []
    with pytest.raises(InvalidRequest) as refused:
        ways.client.enqueue_many(ENDPOINT, GOOD, batch=long_name)
    assert refused.value.fields == ("batch",)
    answer = ways.api.post(
        f"/v1/batches?name={long_name}&endpoint={ENDPOINT}",
        content=b"{}\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert [p["loc"] for p in answer.json()["detail"]] == [["query", "name"]]
    cli = ["batch", "submit", "f.jsonl", "--endpoint", ENDPOINT, "--name", long_name]
    result = CliRunner().invoke(cli_app, cli, env=ways.env)
    assert result.exit_code == 2
    assert f"at most {MAX_BATCH_CHARS} characters" in result.stderr
