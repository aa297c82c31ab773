"""Helpers for tests of the shared embedded Redis: real ``fluxq`` processes, a data dir of the
test's own (FLUXQ_DATA_DIR, never the real home), and its server stopped by pid at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import redis

from fluxq.workers.process.embedded_redis import SharedRedis, pid_alive, read_state
from tests.support.env import clean_env
from tests.support.net import wait_until

__all__ = [
    "clean_env",
    "client_of",
    "embedded",
    "fluxq",
    "fluxq_argv",
    "server_pids_in",
    "stop_embedded",
    "stop_process",
    "wait_until",
]


def fluxq_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "fluxq", *args]


def fluxq(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run one ``fluxq`` command to its end (bounded), output captured."""
    return subprocess.run(
        fluxq_argv(*args),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def server_pids_in(data_dir: Path) -> list[int]:
    """Every live redis-server working in ``data_dir`` (its cwd): the servers started for it."""
    found = []
    want = data_dir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if "redis" in comm and cwd == want and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop_embedded(data_dir: Path) -> None:
    """Stop every redis-server of ``data_dir`` by its pid: SIGTERM, then SIGKILL (teardown)."""
    pids = set(server_pids_in(data_dir)) if data_dir.exists() else set()
    state = read_state(data_dir)
    if state is not None and pid_alive(state.pid):
        pids.add(state.pid)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not any(pid_alive(p) for p in pids), timeout_s=15):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout_s=5)


def embedded(data_dir: Path) -> SharedRedis:
    """The running shared server of ``data_dir`` as its state file records it."""
    state = read_state(data_dir)
    assert state is not None, f"no state file in {data_dir}"
    return state


def client_of(data_dir: Path) -> redis.Redis[str]:
    return embedded(data_dir).client(timeout_s=5.0)


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop a process this test started, by its pid; bounded."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
