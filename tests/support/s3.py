"""A real S3-compatible server for tests: ``python -m moto.server`` as its own process on a free
127.0.0.1 port, stopped by its own pid. Nothing in it is mocked inside the test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.net import free_port


@contextmanager
def running_moto(log_dir: Path, *, start_timeout_s: float = 60) -> Iterator[str]:
    """Start moto's server, yield its endpoint URL, stop it by its pid (SIGTERM, then SIGKILL)."""
    port = free_port()
    log = log_dir / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            assert process.poll() is None, f"moto server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"moto server did not start: {log.read_text()}"
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def isolated_aws_env(tmp_path: Path) -> dict[str, str]:
    """AWS variables that keep botocore from reading a profile or asking instance metadata (every
    request stays on 127.0.0.1); a test adds its own dummy credentials."""
    return {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
