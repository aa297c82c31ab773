"""Worker clusters: real `fluxq worker` processes, a producer-side Runtime, one Redis and one
simulator. Workers are started with the CLI a user would type and stopped by their own pids."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fluxq.simulator.config import SimConfig
from fluxq.simulator.server import SimulatorServer
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import State
from tests.support.env import KEY, clean_env, settings_for
from tests.support.simulator import simulator_fixture

CLUSTER_SIM = SimConfig(time_scale=0.01, rng_seed=99)
"""A fresh simulator per test: a "4 s" model takes 40 ms."""

sim = simulator_fixture(CLUSTER_SIM)

FAST_ENV = {
    "FLUXQ_POLL_PRIOR_MEDIAN_S": "0.05",
    "FLUXQ_POLL_MIN_DELAY_S": "0.02",
    "FLUXQ_POLL_MAX_DELAY_S": "0.1",
    "FLUXQ_RETRY_BACKOFF_BASE_S": "0.05",
    "FLUXQ_SWEEP_INTERVAL_S": "1",
    "FLUXQ_LEASE_TTL_S": "10",
    # The lease must outlast one POST (connect + write + read + pool timeouts): 4.5 s is below
    # both this lease and the 5 s one test_celery_pipeline sets.
    "FLUXQ_HTTP_CONNECT_TIMEOUT_S": "1",
    "FLUXQ_HTTP_READ_TIMEOUT_S": "2",
    "FLUXQ_HTTP_WRITE_TIMEOUT_S": "1",
    "FLUXQ_HTTP_POOL_TIMEOUT_S": "0.5",
}
TERMINAL = (State.DONE.value, State.FAILED.value, State.CANCELLED.value)


@dataclass
class Cluster:
    """Worker processes plus a producer-side Runtime, all on one Redis and one simulator."""

    env: dict[str, str]
    rt: Runtime
    sim: SimulatorServer
    processes: list[subprocess.Popen[bytes]]
    log_dir: Path
    logs: list[Path] = field(default_factory=list)

    def start_worker(
        self, *, threads: int = 8, save_threads: int = 4, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"worker-{len(self.processes)}.log"
        argv = [
            sys.executable, "-P", "-m", "fluxq", "worker",
            "--threads", str(threads), "--save-threads", str(save_threads), "--loglevel", "warning",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, env=self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        self.logs.append(log)
        return process

    def wait_terminal(self, batch: str, total: int, *, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = self.rt.store.batch_counts(batch)
            if sum(counts.get(state, 0) for state in TERMINAL) >= total:
                return counts
            time.sleep(0.2)
        tail = "\n".join(p.read_text()[-3000:] for p in self.logs)
        raise AssertionError(f"batch {batch} not finished in {timeout_s} s: {counts}\n{tail}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def cluster_env(
    sim: SimulatorServer, redis_url: str, tmp_path: Path, settings: dict[str, str]
) -> dict[str, str]:
    """The environment of worker processes on ``sim`` and ``redis_url``: this process's, less any
    FLUXQ_* or key, plus the simulator, the test key, the output dir and ``settings``."""
    own = {
        "BFL_API_KEY": KEY,
        "FLUXQ_REDIS_URL": redis_url,
        "FLUXQ_OUTPUT_DIR": str(tmp_path / "out"),
    }
    return clean_env(**{**sim.env(), **own, **settings})


@pytest.fixture
def make_cluster(
    sim: SimulatorServer, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(**env_overrides: str) -> Cluster:
        env = cluster_env(sim, redis_url, tmp_path, {**FAST_ENV, **env_overrides})
        rt = celery_runtime(settings_for(env))
        cluster = Cluster(env=env, rt=rt, sim=sim, processes=[], log_dir=tmp_path)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()
        cluster.rt.close()
