"""``fluxq worker``: start Celery workers as child processes and stop them by their own pids.

Two workers by default: one for submit, poll and control, and one of its own for save, so a
download (its signed URL lives 10 minutes) never waits behind other work.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from workers.celery_app import CONTROL_QUEUE, POLL_QUEUE, SAVE_QUEUE, SUBMIT_QUEUE

STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker process: its name, queues and thread count."""

    name: str
    queues: tuple[str, ...]
    threads: int


def default_specs(*, threads: int, save_threads: int) -> list[WorkerSpec]:
    if save_threads <= 0:
        queues = (SUBMIT_QUEUE, POLL_QUEUE, SAVE_QUEUE, CONTROL_QUEUE)
        return [WorkerSpec("fluxq", queues, threads)]
    return [
        WorkerSpec("fluxq", (SUBMIT_QUEUE, POLL_QUEUE, CONTROL_QUEUE), threads),
        WorkerSpec("fluxq-save", (SAVE_QUEUE,), save_threads),
    ]


def celery_argv(spec: WorkerSpec, *, loglevel: str) -> list[str]:
    node = f"{spec.name}-{os.getpid()}@{socket.gethostname()}"
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool", "threads", "--concurrency", str(spec.threads),
        "--queues", ",".join(spec.queues), "--hostname", node,
        "--loglevel", loglevel, "--events",
        # Gossip and mingle talk to every other worker at start-up; fluxq needs neither.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


class Supervisor:
    """Starts the worker processes, forwards SIGINT/SIGTERM, and stops all when one exits."""

    def __init__(self, specs: list[WorkerSpec], *, env: dict[str, str], loglevel: str) -> None:
        self.specs = specs
        self.env = env
        self.loglevel = loglevel
        self.children: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def start(self) -> None:
        for spec in self.specs:
            argv = celery_argv(spec, loglevel=self.loglevel)
            self.children.append(subprocess.Popen(argv, env=self.env))  # noqa: S603

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        """Block until a signal or a child exits; then stop every child. Returns an exit code."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.start()
        code = 0
        while not self._stopping:
            for child in self.children:
                if child.poll() is not None:
                    code = child.returncode or 0
                    self._stopping = True
            time.sleep(0.2)
        self.stop()
        return code

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish current tasks
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
