"""``fluxq api`` as a process of its own, as a service runs it: started on a free port, stopped
by its own pid."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from fluxq.api import create_app
from fluxq.cli.api import AllowedHosts
from fluxq.config.settings import load_settings
from tests.support.env import KEY
from tests.support.net import free_port

with warnings.catch_warnings():
    # Starlette 1.x warns that its TestClient on httpx (not httpx2) is deprecated; it works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

BASE_URL = "http://127.0.0.1:8000"
"""The base URL of an in-process client: a loopback name the API's Host check accepts."""

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(redis_url: str, tmp_path: Path) -> Iterator[MakeClient]:
    """An in-process API client on a flushed Redis (lifespan runs: the app's Runtime, its job
    events); ``factory(hosts=..., **settings)``; every client is closed at the end."""
    opened: list[TestClient] = []

    def factory(hosts: AllowedHosts | None = None, **overrides: Any) -> TestClient:
        options: dict[str, Any] = {"bfl_api_key": KEY, "redis_url": redis_url, **overrides}
        settings = load_settings(_env_file=None, output_dir=tmp_path / "out", **options)
        client = TestClient(
            create_app(settings, hosts=hosts), base_url=BASE_URL, raise_server_exceptions=False
        )
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


TOKEN = "integration-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "fluxq", "api", *args]


class ApiServer:
    """One ``fluxq api`` process, stopped by its own pid."""

    def __init__(self, env: dict[str, str], cwd: Path, *, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "api.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                api_argv("--port", str(self.port)),
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_up(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"fluxq api exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"fluxq api not up in {timeout_s} s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
