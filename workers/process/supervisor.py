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

from fluxq.config.celery import CONTROL_QUEUE, POLL_QUEUE, SAVE_QUEUE, SUBMIT_QUEUE
from fluxq.workers.process.children import start_child, stop_child

log = logging.getLogger("fluxq.supervisor")

POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker process: its name, queues and thread count."""

    name: str
    queues: tuple[str, ...]
    threads: int


def default_specs(*, threads: int, save_threads: int) -> list[WorkerSpec]:
    """The worker processes for these thread counts: one, or a main one and a save one."""
    if save_threads <= 0:
        queues = (SUBMIT_QUEUE, POLL_QUEUE, SAVE_QUEUE, CONTROL_QUEUE)
        return [WorkerSpec("fluxq", queues, threads)]
    return [
        WorkerSpec("fluxq", (SUBMIT_QUEUE, POLL_QUEUE, CONTROL_QUEUE), threads),
        WorkerSpec("fluxq-save", (SAVE_QUEUE,), save_threads),
    ]


RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Delays before restarting a crashed worker process, one step per crash in a row."""

STABLE_AFTER_S = 60.0
"""A worker process that ran this long before it exited starts its backoff from the beginning."""


def restart_delay_s(crashes_in_a_row: int) -> float:
    """The backoff before restart number ``crashes_in_a_row`` (1-based)."""
    return RESTART_BACKOFF_S[min(crashes_in_a_row, len(RESTART_BACKOFF_S)) - 1]


@dataclass
class _Child:
    spec: WorkerSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts one process per spec and keeps it running until SIGINT/SIGTERM, then stops all.

    A worker process that exits on its own (Celery can die when Redis restarts under it) is
    logged with its exit code and started again after a backoff; work it held is redelivered
    or recovered by the sweep, so nothing waits for a person.
    """

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        *,
        argv_for: Callable[[WorkerSpec], list[str]],
        env: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.argv_for = argv_for
        self.env = dict(env)
        self.clock = clock
        self._children = [_Child(spec) for spec in specs]
        self._stopping = False
        self.restarts = 0

    @property
    def children(self) -> list[subprocess.Popen[bytes]]:
        return [child.process for child in self._children if child.process is not None]

    def _start(self, child: _Child) -> None:
        child.process = start_child(self.argv_for(child.spec), env=self.env)
        child.started_at = self.clock()
        child.restart_at = None

    def start(self) -> None:
        for child in self._children:
            self._start(child)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def check(self) -> None:
        """One supervision step: notice exited children, restart those whose backoff is over."""
        now = self.clock()
        for child in self._children:
            process = child.process
            if process is not None and process.poll() is not None:
                ran_s = now - child.started_at
                child.crashes = 1 if ran_s >= STABLE_AFTER_S else child.crashes + 1
                delay_s = restart_delay_s(child.crashes)
                log.error(
                    "worker process exited name=%s pid=%d code=%s ran_s=%.1f; restarting in %.0f s",
                    child.spec.name,
                    process.pid,
                    process.returncode,
                    ran_s,
                    delay_s,
                )
                child.process = None
                child.restart_at = now + delay_s
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._start(child)
                self.restarts += 1

    def run(self) -> int:
        """Supervise until SIGINT or SIGTERM; then stop every child. Returns 0."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.start()
        while not self._stopping:
            self.check()
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        return 0

    def stop(self) -> None:
        running = self.children
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish current tasks
        for process in running:
            stop_child(process)
