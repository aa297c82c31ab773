"""``fluxq flower`` as a user runs it: started in a session of its own on a free loopback port,
answered over HTTP, stopped by its own pid (and anything it started, by process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from fluxq.workers.process.embedded_redis import free_port
from tests.support.net import wait_until

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def flower_env(redis_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment less FLUXQ_*, FLOWER_* and the key, plus Redis and ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLUXQ_", "FLOWER_")) and k != "BFL_API_KEY"
    }
    env |= {"FLUXQ_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    env |= dict(extra or {})
    return env


def flower_argv(port: int, *args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "fluxq", "flower", "--port", str(port), *args]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def in_group(pgrp: int) -> list[int]:
    """Live processes of process group ``pgrp`` (Flower's session: it and anything it started)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[2]) == pgrp and fields[0] != "Z":
            found.append(int(name))
    return found


@dataclass
class Flower:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    exit_code: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def answers(self) -> bool:
        try:
            httpx.get(f"{self.base_url}/healthcheck", timeout=1.0)
        except httpx.HTTPError:
            return False
        return True


@contextlib.contextmanager
def running_flower(env: dict[str, str], cwd: Path, log: Path, *args: str) -> Iterator[Flower]:
    """``fluxq flower`` until the block ends, then SIGTERM (SIGKILL after STOP_TIMEOUT_S)."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            flower_argv(port, *args), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    flower = Flower(process, port, log)
    try:
        up = wait_until(
            lambda: process.poll() is not None or flower.answers(), timeout_s=START_TIMEOUT_S
        )
        assert up, f"no answer in {START_TIMEOUT_S} s\n{flower.log_text()[-3000:]}"
        assert process.poll() is None, f"exit {process.poll()}\n{flower.log_text()[-3000:]}"
        yield flower
    finally:
        flower.exit_code = stop_session(process, STOP_TIMEOUT_S)


def stop_session(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM a process started in a session of its own (SIGKILL after ``timeout_s``), then
    SIGKILL whatever of its group is left; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait(timeout=5)
    for pid in in_group(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return code
