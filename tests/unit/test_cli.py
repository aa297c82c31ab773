"""The command line: help, config with secrets masked, and clear errors for bad input."""

from __future__ import annotations

import os

import pytest
import redis
from typer.testing import CliRunner

from fluxq.cli import app
from fluxq.config.settings import Settings
from fluxq.workers.state import keys
from fluxq.workers.state.limiter import Caps, PauseKind, SlotLimiter

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in list(os.environ):
        if name.startswith("FLUXQ_") or name == "BFL_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "config",
        "simulator",
        "worker",
        "enqueue",
        "status",
        "resume",
        "demo",
        "flower",
    ):
        assert command in result.output


def test_config_prints_settings_with_the_key_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "very-secret-key")
    monkeypatch.setenv("FLUXQ_ACTIVE_CAP", "12")
    result = runner.invoke(app, ["config"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "very-secret-key" not in result.output
    assert "**********" in result.output
    assert "12" in result.output


def test_config_names_every_bad_variable_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXQ_ACTIVE_CAP", "zero")
    monkeypatch.setenv("FLUXQ_POLL_DEADLINE_S", "-1")
    result = runner.invoke(app, ["config"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "FLUXQ_ACTIVE_CAP" in result.output
    assert "FLUXQ_POLL_DEADLINE_S" in result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--faults", "submit_503=2"], "submit_503"),
        (["--faults", "bogus=0.1"], "bogus"),
        (["--latency", "flux-nope=fixed:1"], "flux-nope"),
    ],
)
def test_the_simulator_refuses_bad_options_naming_them(args: list[str], named: str) -> None:
    result = runner.invoke(app, ["simulator", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert named in result.output


def test_resume_clears_a_credit_pause(redis_url: str) -> None:
    # Given admission paused for credits on the key of BFL_API_KEY=k
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    label = keys.key_label(Settings(bfl_api_key="k").bfl_api_key)
    limiter = SlotLimiter(client, label=label, caps=Caps(key_cap=24, group_caps={}))
    limiter.pause(PauseKind.OUT_OF_CREDITS, "test")
    # When the user runs fluxq resume
    result = runner.invoke(
        app, ["resume"], env={"FLUXQ_REDIS_URL": redis_url, "BFL_API_KEY": "k", "COLUMNS": "200"}
    )
    # Then admission is no longer paused
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    assert limiter.paused(now_s=0.0) is None
    client.close()


def test_enqueue_without_a_redis_url_uses_the_shared_embedded_redis() -> None:
    # With FLUXQ_REDIS_URL unset the job goes to fluxq's own Redis of the data dir (a temporary
    # one in tests), which every later command finds: enqueue says so, and succeeds.
    result = runner.invoke(
        app,
        ["enqueue", "--endpoint", "flux-dev", "--prompt", "x", "--job-id", "shared-1"],
        env={"COLUMNS": "200", "FLUXQ_REDIS_URL": ""},
    )
    assert result.exit_code == 0, result.output
    assert "embedded Redis" in result.output
    status = runner.invoke(app, ["status"], env={"COLUMNS": "200", "FLUXQ_REDIS_URL": ""})
    assert status.exit_code == 0, status.output
    assert "queued" in status.output


@pytest.mark.parametrize(
    ("args", "field"),
    [
        # A lone surrogate: what Python makes of argv bytes that are not UTF-8 ...
        (["--prompt", "a heron \udcff"], "prompt"),
        # ... or of a JSON \ud800 escape in a --param value
        (["--prompt", "a heron", "--param", 'image_prompt="\\ud800"'], "image_prompt"),
    ],
)
def test_enqueue_refuses_text_that_is_not_utf8_naming_the_field_and_enqueues_nothing(
    redis_url: str, args: list[str], field: str
) -> None:
    env = {"FLUXQ_REDIS_URL": redis_url, "BFL_API_KEY": "k", "COLUMNS": "200"}
    result = runner.invoke(app, ["enqueue", "--endpoint", "flux-dev", *args], env=env)
    assert result.exit_code == 2, result.output
    assert f"{field}: holds a lone surrogate" in result.output
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.keys("fluxq:job:*") == []
    assert client.llen("fluxq.submit") == 0
    client.close()
