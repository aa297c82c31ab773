"""A wait says why it is not moving: no worker consuming, admission paused; and it shows progress.

Real ``fluxq enqueue --wait`` processes on a real Redis; stderr is read as it comes, with a
deadline, and the process is stopped by its pid.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
import redis
from pydantic import SecretStr

from fluxq.simulator import parse_latency
from fluxq.simulator.server import SimulatorServer
from fluxq.workers.celery_app import make_celery
from fluxq.workers.state.keys import key_label
from fluxq.workers.state.limiter import Caps, PauseKind, SlotLimiter
from tests.support.cluster import FAST_ENV, Cluster
from tests.support.embedded import clean_env, fluxq, fluxq_argv, stop_process, wait_until
from tests.support.env import KEY, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SAYS_WITHIN_S = 10.0


class Lines:
    """The lines a process writes, each with when it came, read on threads as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.started = time.monotonic()
        self.seen: list[tuple[float, str, str]] = []
        self._queue: queue.Queue[tuple[float, str, str]] = queue.Queue()
        self._process = process
        self._threads: list[threading.Thread] = []
        for name, stream in (("out", process.stdout), ("err", process.stderr)):
            assert stream is not None
            thread = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put((time.monotonic(), name, line.rstrip("\n")))

    def wait_for(self, needle: str, *, timeout_s: float) -> tuple[float, str] | None:
        """(seconds since the start, the line) of the first line holding ``needle``, or None."""
        deadline = self.started + timeout_s
        for at, _, line in self.seen:
            if needle in line:
                return at - self.started, line
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                at, name, line = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            self.seen.append((at, name, line))
            if needle in line:
                return at - self.started, line

    def text(self) -> str:
        return "\n".join(f"{name}: {line}" for _, name, line in self.seen)

    def stop(self) -> None:
        """Stop the process by its pid, let the readers reach the end, close the pipes."""
        stop_process(self._process)
        for thread in self._threads:
            thread.join(timeout=10)
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


def start_wait(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    argv = fluxq_argv(
        "enqueue", "--endpoint", "flux-dev", "--prompt", "a heron at dawn", "--wait", *args
    )
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, Lines(process)


def env_on(redis_url: str, sim: SimulatorServer, tmp_path: Path) -> dict[str, str]:
    env = clean_env(FLUXQ_REDIS_URL=redis_url, BFL_API_KEY=KEY, FLUXQ_OUTPUT_DIR=str(tmp_path))
    return env | FAST_ENV | sim.env()


def test_a_wait_with_no_worker_says_so_within_10_s(
    redis_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    # Given no worker on this Redis, when a job is enqueued with --wait
    process, lines = start_wait(env_on(redis_url, sim, tmp_path))
    try:
        # Then within 10 s of the command's start it says no worker is consuming, and how to fix
        said = lines.wait_for("no worker is consuming", timeout_s=SAYS_WITHIN_S)
        assert said is not None, lines.text()
        assert "`fluxq worker`" in said[1]
        assert lines.wait_for("enqueued job=", timeout_s=SAYS_WITHIN_S) is not None
        # And it shows where the job is
        progress = lines.wait_for("fluxq: job ", timeout_s=SAYS_WITHIN_S)
        assert progress is not None, lines.text()
        assert re.search(r": (queued|admitted) \(\d+ s\)$", progress[1]), progress
        # And it goes on waiting (the job waits in Redis for a worker)
        assert process.poll() is None
    finally:
        lines.stop()


def test_a_wait_on_paused_admission_says_why_and_when_it_reopens(
    redis_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    # Given admission paused for the key: BFL said 402
    client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
    limiter = SlotLimiter(
        client, label=key_label(SecretStr(KEY)), caps=Caps(key_cap=24, group_caps={})
    )
    limiter.pause(PauseKind.OUT_OF_CREDITS, "insufficient credits")
    process, lines = start_wait(env_on(redis_url, sim, tmp_path), "--job-id", "paused-1")
    try:
        # Then the wait says admission is paused, why, and what resumes it
        said = lines.wait_for("admission is paused", timeout_s=SAYS_WITHIN_S)
        assert said is not None, lines.text()
        assert "out of credits (402): insufficient credits" in said[1]
        assert "fluxq resume" in said[1]
        assert client.hget("fluxq:job:paused-1", "state") == "queued"
        assert process.poll() is None  # it goes on waiting: nothing failed
        # When admission is resumed, it says so
        limiter.resume()
        assert lines.wait_for("admission is open again", timeout_s=SAYS_WITHIN_S), lines.text()
    finally:
        lines.stop()
        client.close()


def answers_ping(cluster: Cluster) -> Callable[[], bool]:
    app = make_celery(settings_for(cluster.env))
    return lambda: bool(app.control.ping(timeout=0.5, limit=1))


def test_a_wait_with_a_worker_running_shows_progress_and_no_missing_worker(
    make_cluster: Callable[..., Cluster], sim: SimulatorServer
) -> None:
    # Given a running worker, and a task that takes 6 s at BFL (time scale 0.01)
    sim.configure(latency=parse_latency("default=fixed:600"))
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=0)
    assert wait_until(answers_ping(cluster), timeout_s=60), cluster.logs[0].read_text()
    # When a job is enqueued with --wait
    run = fluxq(cluster.env, "enqueue", "--endpoint", "flux-dev", "--prompt", "a fox", "--wait")
    # Then it ends done, having shown its states, and never claimed no worker was there
    assert run.returncode == 0, run.stdout + run.stderr
    assert "done job=" in run.stdout
    assert re.search(r"job \S+: submitted", run.stderr), run.stderr
    assert "no worker is consuming" not in run.stderr


def test_a_batch_watch_with_no_worker_says_so_within_10_s(
    redis_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    # Given a batch submitted while no worker runs on this Redis
    env = env_on(redis_url, sim, tmp_path)
    lines_file = tmp_path / "night.jsonl"
    lines_file.write_text('{"prompt": "a heron", "seed": 1}\n{"prompt": "a fox", "seed": 2}\n')
    submitted = fluxq(env, "batch", "submit", str(lines_file), "--endpoint", "flux-dev",
                      "--name", "night")  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    # When its status is watched
    argv = fluxq_argv("batch", "status", "night", "--watch")
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = Lines(process)
    try:
        # Then within 10 s of the command's start it says no worker is consuming
        said = lines.wait_for("no worker is consuming", timeout_s=SAYS_WITHIN_S)
        assert said is not None, lines.text()
        assert process.poll() is None  # and it goes on watching
    finally:
        lines.stop()


def test_a_batch_watch_blocked_by_doubtful_holds_says_what_holds_them_and_until_when(
    redis_url: str, sim: SimulatorServer, tmp_path: Path
) -> None:
    # Given every slot of the key held for doubtful POSTs (jobs failed as uncertain), the first
    # hold ending in 5 minutes, and a batch submitted behind them (nothing can be admitted)
    client: redis.Redis[str] = redis.Redis.from_url(redis_url, decode_responses=True)
    env = env_on(redis_url, sim, tmp_path) | {"FLUXQ_ACTIVE_CAP": "3"}
    limiter = SlotLimiter(
        client, label=key_label(SecretStr(KEY)), caps=Caps(key_cap=3, group_caps={})
    )
    first = time.time() + 300
    for i in range(3):
        limiter.hold_doubtful(f"earlier.u{i}", "default", until_s=first + 60 * i)
    lines_file = tmp_path / "night.jsonl"
    lines_file.write_text('{"prompt": "a heron", "seed": 1}\n{"prompt": "a fox", "seed": 2}\n')
    submitted = fluxq(env, "batch", "submit", str(lines_file), "--endpoint", "flux-dev",
                      "--name", "night")  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert client.hget("fluxq:batch:night", "queued") == "2"
    # When its status is watched (no terminal: a log)
    argv = fluxq_argv("batch", "status", "night", "--watch")
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = Lines(process)
    try:
        # Then within 10 s it says, in one line, what holds the slots and when admission resumes
        said = lines.wait_for("batch night waits: ", timeout_s=SAYS_WITHIN_S)
        assert said is not None, lines.text()
        until = time.strftime("%H:%M:%S", time.localtime(first + 120))
        resumes = time.strftime("%H:%M:%S", time.localtime(first))
        assert (
            f"all 3 slots taken: 0 at BFL, 3 held for doubtful POSTs until {until}; "
            f"admission resumes by {resumes}"
        ) in said[1]
        assert lines.wait_for("0 done, 0 failed", timeout_s=1) is not None, lines.text()
        assert process.poll() is None  # and it goes on watching
    finally:
        lines.stop()
        client.close()
