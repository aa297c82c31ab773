"""``fluxq metrics`` off loopback: refused without FLUXQ_API_TOKEN, a bearer token with it.

No socket is ever bound to an address other than loopback: 0.0.0.0 is only an argument that
must be refused before anything binds; the token check is served on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from fluxq.cli import app
from fluxq.cli import metrics as metrics_cli
from fluxq.workers.process.embedded_redis import free_port

runner = CliRunner()
TOKEN = "metrics-test-token"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in list(os.environ):
        if name.startswith("FLUXQ_") or name == "BFL_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("BFL_API_KEY", "metrics-cli-key")
    # Never reached: a refusal comes before Redis is asked and before anything binds.
    monkeypatch.setenv("FLUXQ_REDIS_URL", "redis://127.0.0.1:1/0")


@pytest.fixture
def no_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_to_bind(*_: Any, **__: Any) -> Any:
        raise AssertionError("fluxq metrics bound a socket it should have refused")

    monkeypatch.setattr(metrics_cli, "_serve", refuse_to_bind)
    monkeypatch.setattr(metrics_cli, "store_or_exit", refuse_to_bind)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "metrics.example.com"])
@pytest.mark.usefixtures("no_bind")
def test_an_address_off_loopback_without_a_token_is_refused_in_one_line(host: str) -> None:
    result = runner.invoke(app, ["metrics", "--host", host, "--port", "9108"])

    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"refusing to serve {host} without a token" in lines[0]
    assert "FLUXQ_API_TOKEN" in lines[0]
    assert "127.0.0.1" in lines[0]


@pytest.mark.parametrize(
    ("host", "token_set", "refused"),
    [
        ("127.0.0.1", False, False),
        ("127.0.0.2", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("[::1]", False, False),
        ("0.0.0.0", False, True),
        ("0.0.0.0", True, False),
        ("10.1.2.3", True, False),
    ],
)
def test_the_rule_is_fluxq_apis_loopback_unless_a_token_is_set(
    host: str, token_set: bool, refused: bool
) -> None:
    assert (metrics_cli.refusal(host, token_set) is not None) is refused


def test_once_binds_nothing_so_its_address_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[str] = []

    def store_reached(_settings: object) -> None:
        reached.append("store")
        raise typer.Exit(0)

    monkeypatch.setattr(metrics_cli, "store_or_exit", store_reached)
    result = runner.invoke(app, ["metrics", "--host", "0.0.0.0", "--once"])

    assert reached == ["store"]
    assert "refusing" not in result.output


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fluxq_up 1\n"]


@pytest.fixture
def guarded_url() -> Iterator[str]:
    port = free_port()
    server, thread = metrics_cli._serve("127.0.0.1", port, metrics_cli.bearer_guard(hello, TOKEN))
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ],
)
def test_the_guard_answers_401_without_the_bearer_token(
    guarded_url: str, headers: dict[str, str]
) -> None:
    response = httpx.get(guarded_url, headers=headers, timeout=5)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "fluxq_up" not in response.text


def test_the_guard_serves_a_scrape_that_sends_the_token(guarded_url: str) -> None:
    response = httpx.get(guarded_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)

    assert response.status_code == 200
    assert response.text == "fluxq_up 1\n"
