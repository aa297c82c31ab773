"""``fluxq api`` as a process of its own, as a service runs it: started on a free port, stopped
by its own pid."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.net import free_port

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
