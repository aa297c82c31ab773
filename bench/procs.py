"""Processes the benchmark starts: a line read with a deadline, a stop by pid, and a sampler of a
process tree's CPU and memory (``fluxq worker`` is a supervisor with two Celery workers)."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from fluxq.workers.process.children import stop_child

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Put on PYTHONPATH of ``python -m bench.*`` children: ``bench`` is not an installed package."""

SAMPLE_INTERVAL_S = 0.5


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the repository importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def spawn(argv: Sequence[str], *, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a ``bench.*`` module that talks over stdin/stdout; stderr goes to ``log``.

    Such children exit when their stdin closes, so they never outlive the benchmark.
    """
    with log.open("ab") as err:
        return subprocess.Popen(
            list(argv), env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )


def read_line(process: subprocess.Popen[bytes], timeout_s: float, log: Path) -> str:
    """The child's next stdout line; RuntimeError (with its log's tail) on exit or timeout."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            why = "timed out" if left <= 0 or not ready else f"exited ({process.poll()})"
            raise RuntimeError(f"{process.args!r} {why} before a line:\n{log_tail(log)}")
        data += chunk
    return data.decode().strip()


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a child's log, for error messages."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Close its stdin, SIGTERM it by pid, wait, then SIGKILL: gone when this returns."""
    if process.stdin is not None and not process.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    stop_child(process, timeout_s=timeout_s)
    if process.stdout is not None:
        process.stdout.close()


class TreeSampler:
    """CPU seconds and peak RSS of a process and all its descendants, sampled in a thread.

    CPU of a process = user + system of every live one, plus what parents report for children
    they reaped (``children_user``/``children_system``); a process gone without a live parent
    in the tree keeps its last sample. RSS peak = the largest sum over one sample.
    """

    def __init__(self, pid: int, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._own: dict[int, float] = {}
        self._reaped: dict[int, float] = {}
        self._parent: dict[int, int] = {}
        self._alive: set[int] = set()
        self._cpu_s = 0.0
        self.peak_rss_bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> float:
        """Sample the tree now; returns its CPU seconds so far."""
        with self._lock:
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return self._cpu_s  # the root is gone: keep what was last seen
            alive: set[int] = set()
            rss = 0
            for proc in procs:
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        rss_now = proc.memory_info().rss
                        ppid = proc.ppid()
                except psutil.Error:
                    continue
                self._own[proc.pid] = times.user + times.system
                self._reaped[proc.pid] = times.children_user + times.children_system
                self._parent[proc.pid] = ppid
                alive.add(proc.pid)
                rss += rss_now
            self._alive = alive
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            live = sum(self._own[pid] + self._reaped[pid] for pid in alive)
            lost = sum(
                own
                for pid, own in self._own.items()
                if pid not in alive and self._parent[pid] not in alive
            )
            self._cpu_s = live + lost
            return self._cpu_s

    def close(self) -> float:
        """Stop sampling after one last sample; returns the tree's CPU seconds."""
        cpu_s = self.sample()
        self._stop.set()
        self._thread.join(5)
        return cpu_s
