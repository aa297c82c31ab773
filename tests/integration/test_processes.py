"""The processes fluxq starts: they ignore the user's modules, and die with their parent.

``fluxq worker`` and ``fluxq flower`` run as a user starts them (``python -P -m fluxq …``), each in
a session of its own so that anything it leaves behind is found by its process group, and every
process is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from fluxq.simulator.server import SimulatorServer
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.process.embedded_redis import read_state
from tests.support.cluster import FAST_ENV, Cluster
from tests.support.embedded import stop_embedded, wait_until
from tests.support.env import KEY, clean_env
from tests.support.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

USER_MODULE = 'raise RuntimeError("user tasks imported")\n'


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc/<pid>/stat, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)", which may hold spaces
    return fields[0], int(fields[1]), int(fields[2])


def live(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has exited; its reaper is not us)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(parent: int) -> list[int]:
    return [pid for pid in all_pids() if (stat := proc_stat(pid)) and stat[1] == parent]


def live_in_group(pgrp: int) -> list[int]:
    """Live processes of process group ``pgrp`` (a session leader's descendants stay in it)."""
    return [pid for pid in all_pids() if (s := proc_stat(pid)) and s[2] == pgrp and s[0] != "Z"]


SUPERVISOR_RSS_MB = 40
"""The supervisor's resident memory at most (measured: about 21 MB; the CLI it was: 66 MB)."""


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def kill_left_over(pids: Iterable[int]) -> None:
    """SIGKILL, by pid, whatever a failed test left running."""
    for pid in pids:
        if live(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_a_worker_started_in_a_directory_with_its_own_tasks_and_config_never_imports_them(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Given a working directory whose tasks.py and config/ would shadow fluxq's packages
    workdir = tmp_path / "project"
    (workdir / "config").mkdir(parents=True)
    (workdir / "tasks.py").write_text(USER_MODULE)
    (workdir / "config" / "__init__.py").write_text(USER_MODULE)
    cluster = make_cluster()
    # When `fluxq worker` starts there and a job is enqueued
    cluster.start_worker(threads=4, save_threads=2, cwd=workdir)
    job_id = enqueue(cluster.rt, "flux-dev", {"prompt": "a quiet room", "seed": 3}, batch="cwd")
    # Then the job is done, and neither the supervisor nor a worker imported the user's modules
    counts = cluster.wait_terminal("cwd", 1, timeout_s=30)
    assert counts.get("done") == 1, counts
    job = cluster.rt.store.get(job_id)
    assert job is not None
    assert job.path is not None
    assert Path(job.path).exists()
    log = cluster.logs[0].read_text(errors="replace")
    assert "user tasks imported" not in log, log[-3000:]


def test_sigkill_of_a_worker_leaves_no_child_and_the_shared_redis_keeps_the_work(
    sim: SimulatorServer, tmp_path: Path
) -> None:
    # Given `fluxq worker` with no FLUXQ_REDIS_URL: it uses the data dir's shared Redis, which is
    # not its child (it outlives every command, until `fluxq redis stop`)
    data_dir = tmp_path / "data"
    env = clean_env() | sim.env() | FAST_ENV
    env |= {
        "BFL_API_KEY": KEY, "FLUXQ_OUTPUT_DIR": str(tmp_path / "out"),
        "FLUXQ_DATA_DIR": str(data_dir),
    }  # fmt: skip
    log = tmp_path / "worker.log"
    argv = [sys.executable, "-P", "-m", "fluxq", "worker", "--threads", "2", "--save-threads", "1"]
    with log.open("wb") as out:
        worker = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    children: list[int] = []
    try:

        def started() -> bool:
            children[:] = children_of(worker.pid)
            lines = [cmdline(pid) for pid in children]
            workers = [c for c in lines if "fluxq.worker_process" in c]
            ready = log.read_text(errors="replace").count(" ready.")
            return len(workers) == 2 and ready >= 2

        assert wait_until(started, timeout_s=30, interval_s=0.1), (
            f"children {children}: {[cmdline(p) for p in children]}\n{log.read_text()[-3000:]}"
        )
        assert not any("redis-server" in cmdline(pid) for pid in children)
        # The command became the bare supervisor (same pid), keeping none of the CLI's memory
        assert "-m fluxq.workers.process.supervise " in cmdline(worker.pid)
        assert rss_mb(worker.pid) < SUPERVISOR_RSS_MB
        shared = read_state(data_dir)
        assert shared is not None
        # When the worker is killed with SIGKILL (no handler runs)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=5)
        # Then within 5 s every child is gone, and the shared Redis still answers
        gone = wait_until(lambda: not any(live(pid) for pid in children), timeout_s=5)
        assert gone, {pid: cmdline(pid) for pid in children if live(pid)}
        assert live_in_group(worker.pid) == []
        assert live(shared.pid)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=5)
        kill_left_over([*children, *live_in_group(worker.pid)])
        stop_embedded(data_dir)


def test_sigterm_stops_flower_and_leaves_no_child(redis_url: str, tmp_path: Path) -> None:
    # Given `fluxq flower` listening on a free loopback port
    port = free_port()
    env = clean_env() | {"FLUXQ_REDIS_URL": redis_url}
    log = tmp_path / "flower.log"
    argv = [sys.executable, "-P", "-m", "fluxq", "flower", "--port", str(port)]
    with log.open("wb") as out:
        flower = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    children: list[int] = []
    try:
        listening = wait_until(
            lambda: flower.poll() is None and accepts(port), timeout_s=20, interval_s=0.1
        )
        assert listening, f"exit {flower.poll()}\n{log.read_text()[-3000:]}"
        children = children_of(flower.pid)
        # When it gets SIGTERM
        flower.send_signal(signal.SIGTERM)
        # Then it exits within 10 s, and nothing it started is left
        try:
            code = flower.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flower still running 10 s after SIGTERM\n{log.read_text()[-3000:]}")
        assert code == 0, log.read_text()[-3000:]
        assert not accepts(port)
        assert not any(live(pid) for pid in children)
        assert live_in_group(flower.pid) == []
    finally:
        if flower.poll() is None:
            flower.kill()
            flower.wait(timeout=5)
        kill_left_over([*children, *live_in_group(flower.pid)])
