"""Failures a user can cause, run as the real ``fluxq`` process: one line on stderr, exit 2.

Each command runs as ``python -P -m fluxq …`` in an empty directory with no fluxq variables set,
so what is checked is what a user sees: the exit code, the single stderr line naming the problem,
and no traceback, unless ``--debug`` asks for one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def run_fluxq(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("FLUXQ_") and k != "BFL_API_KEY"
    }
    return subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", *args],
        cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a user-caused failure (exit 2, no traceback anywhere)."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout, shown
    assert "Traceback" not in result.stderr, shown
    line = result.stderr.rstrip("\n")
    assert line.strip(), shown
    assert "\n" not in line, shown
    return line


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test holds bound (and listening) until it ends."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_status_with_redis_unreachable_names_redis_and_the_url_on_one_line(
    tmp_path: Path,
) -> None:
    line = one_line_failure(run_fluxq(tmp_path, "status", FLUXQ_REDIS_URL=UNREACHABLE_REDIS))
    assert "Redis" in line
    assert UNREACHABLE_REDIS in line
    assert "FLUXQ_REDIS_URL" in line  # the fix


@pytest.mark.parametrize(
    "url", ["not-a-url", "redis://127.0.0.1:notaport/0"], ids=["no-scheme", "bad-port"]
)
def test_status_with_a_malformed_redis_url_names_fluxq_redis_url_and_a_valid_shape(
    tmp_path: Path, url: str
) -> None:
    line = one_line_failure(run_fluxq(tmp_path, "status", FLUXQ_REDIS_URL=url))
    assert "FLUXQ_REDIS_URL" in line
    assert "redis://127.0.0.1:6379/0" in line  # what a valid one looks like
    assert "unexpected error" not in line


def test_config_names_every_bad_variable_on_one_line(tmp_path: Path) -> None:
    line = one_line_failure(
        run_fluxq(tmp_path, "config", FLUXQ_REDIS_URL="not-a-url", FLUXQ_ACTIVE_CAP="zero")
    )
    assert "FLUXQ_REDIS_URL" in line
    assert "FLUXQ_ACTIVE_CAP" in line


def test_the_simulator_on_a_port_in_use_names_the_port(tmp_path: Path, held_port: int) -> None:
    line = one_line_failure(run_fluxq(tmp_path, "simulator", "--port", str(held_port)))
    assert str(held_port) in line
    assert "in use" in line
    assert "--port" in line  # the fix


def test_the_simulator_on_a_non_loopback_host_names_loopback(tmp_path: Path) -> None:
    result = run_fluxq(tmp_path, "simulator", "--host", "0.0.0.0", "--port", "0")
    line = one_line_failure(result)
    assert "loopback" in line
    assert "0.0.0.0" in line
    assert result.stdout == ""  # nothing printed around the message


def test_worker_without_a_key_against_the_real_api_names_bfl_api_key(tmp_path: Path) -> None:
    line = one_line_failure(run_fluxq(tmp_path, "worker"))
    assert "BFL_API_KEY" in line
    assert "fluxq simulator" in line  # one of the fixes


def test_worker_against_a_local_simulator_without_its_allowed_urls_refuses_to_start(
    tmp_path: Path,
) -> None:
    # Pointing at `fluxq simulator` but not allowing its polling host would pay every submit and
    # then fail every job: refused before anything starts, naming the variable to set.
    result = run_fluxq(
        tmp_path, "worker", FLUXQ_BFL_BASE_URL="http://127.0.0.1:8080", BFL_API_KEY="sim-key"
    )
    message = one_line_failure(result)
    assert "FLUXQ_ALLOWED_URLS" in message
    assert "fluxq simulator" in message


def test_debug_shows_the_traceback_of_an_unreachable_redis(tmp_path: Path) -> None:
    result = run_fluxq(tmp_path, "--debug", "status", FLUXQ_REDIS_URL=UNREACHABLE_REDIS)
    assert result.returncode != 0
    assert "Traceback" in result.stderr, result.stderr
    assert "ConnectionError" in result.stderr
