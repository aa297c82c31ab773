"""``fluxq worker``'s supervisor: start worker processes, keep them running, stop them by pid.

Two workers by default: one for submit, poll and control, and one of its own for save, so a
download (its signed URL lives 10 minutes) never waits behind other work.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from config.celery import CONTROL_QUEUE, POLL_QUEUE, SAVE_QUEUE, SUBMIT_QUEUE
from workers.process.children import start_child, stop_child

log = logging.getLogger("fluxq.supervisor")

POLL_INTERVAL_S = 0.2


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


class Supervisor:
    """Starts one process per spec, forwards SIGINT/SIGTERM, and stops all when one exits."""

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        argv_for: Callable[[WorkerSpec], list[str]],
        env: Mapping[str, str],
    ) -> None:
        self.specs = list(specs)
        self.argv_for = argv_for
        self.env = dict(env)
        self.children: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def start(self) -> None:
        for spec in self.specs:
            self.children.append(start_child(self.argv_for(spec), env=self.env))

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
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        return code

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish current tasks
        for child in self.children:
            stop_child(child)
