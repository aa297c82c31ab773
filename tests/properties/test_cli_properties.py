"""Property of the CLI way in: ``fluxq enqueue`` with any arguments either enqueues a job that
exists in Redis (exit 0) or names a problem (exit 2); never another exit code or a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fluxq.cli import app
from fluxq.workers.state.store import JobStore
from tests.support.env import scrub_env

runner = CliRunner()

text = st.text(alphabet=st.characters(blacklist_characters="\x00"))
ints = st.one_of(st.integers(), st.integers(min_value=-(10**30), max_value=10**30))
endpoints = st.one_of(st.sampled_from(["flux-dev", "flux-pro-1.1", "flux-kontext-pro"]), text)


@st.composite
def enqueue_args(draw: st.DrawFn) -> list[str]:
    args = ["enqueue", "--endpoint", draw(endpoints), "--prompt", draw(text)]
    optional = {
        "--width": ints.map(str),
        "--height": ints.map(str),
        "--batch": text,
        "--name": text,
        "--job-id": text,
        "--priority": ints.map(str),
    }
    for flag, values in optional.items():
        if draw(st.booleans()):
            args += [flag, draw(values)]
    for param in draw(st.lists(text, max_size=3)):
        args += ["--param", param]
    return args


@pytest.fixture
def scrubbed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scrub_env(monkeypatch, tmp_path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(args=enqueue_args())
def test_enqueue_either_enqueues_or_exits_2_naming_a_problem(
    scrubbed: None, redis_url: str, args: list[str]
) -> None:
    flush = redis.Redis.from_url(redis_url)
    flush.flushdb()
    flush.close()
    env = {"FLUXQ_REDIS_URL": redis_url, "BFL_API_KEY": "k", "COLUMNS": "200"}
    result = runner.invoke(app, args, env=env)
    context = f"args={args!r} exit={result.exit_code} output={result.output!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{context} exception={result.exception!r}"
    )
    assert "Traceback" not in result.output, context
    assert result.exit_code in (0, 2), context
    if result.exit_code == 0:
        assert "enqueued job=" in result.output, context
        found = re.search(r"enqueued job=(.*?) batch=", result.output, re.S)
        assert found is not None, context
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert JobStore(client).get(found.group(1)) is not None, context
        finally:
            client.close()
    else:
        assert result.output.strip(), context
