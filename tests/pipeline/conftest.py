"""Pipeline tests without a broker: the real task logic, a real Redis, the simulator over loopback.

An inline dispatcher runs the chain (submit → poll → save → callbacks) in the test thread, honouring
countdowns, so each outcome can be driven step by step and judged by the simulator's own counters.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fluxq.config.settings import Settings, load_settings
from fluxq.simulator.config import SimConfig
from fluxq.simulator.server import SimulatorServer, running_simulator
from fluxq.tasks.callbacks import deliver_webhook
from fluxq.tasks.poll import poll_job
from fluxq.tasks.save import save_job
from fluxq.tasks.submit import submit_job
from fluxq.workers.runtime import Runtime, build_runtime
from fluxq.workers.state.jobs import Job

KEY = "pipeline-test-key"
FAST = {
    "poll_prior_median_s": 0.02,
    "poll_min_delay_s": 0.01,
    "poll_max_delay_s": 0.05,
    "retry_backoff_base_s": 0.01,
    "lease_ttl_s": 5.0,
    # The lease must outlast one POST (connect + write + read + pool timeouts): 4.5 s < 5 s.
    "http_connect_timeout_s": 1.0,
    "http_read_timeout_s": 2.0,
    "http_write_timeout_s": 1.0,
    "http_pool_timeout_s": 0.5,
}


@dataclass(order=True)
class Due:
    at_s: float
    seq: int
    kind: str = field(compare=False)
    job_id: str = field(compare=False)
    attempt: int = field(compare=False, default=1)


class InlineDispatcher:
    """Records what Celery would be sent, and runs it in order of due time."""

    def __init__(self) -> None:
        self.heap: list[Due] = []
        self.sent: list[tuple[str, str]] = []
        self.callbacks: list[dict[str, object]] = []
        self._seq = itertools.count()

    def _push(self, kind: str, job_id: str, countdown_s: float, attempt: int = 1) -> None:
        self.sent.append((kind, job_id))
        heapq.heappush(
            self.heap, Due(time.monotonic() + countdown_s, next(self._seq), kind, job_id, attempt)
        )

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self._push("submit", job.job_id, countdown_s)

    def poll(self, job: Job, *, countdown_s: float) -> None:
        self._push("poll", job.job_id, countdown_s)

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self._push("save", job.job_id, countdown_s)

    def webhook(self, job: Job) -> None:
        self._push("webhook", job.job_id, 0.0)

    def callback(self, job: Job, payload: dict[str, object]) -> None:
        self.callbacks.append(payload)

    def kinds(self, job_id: str) -> list[str]:
        return [kind for kind, jid in self.sent if jid == job_id]


RUNNERS: dict[str, Callable[[Runtime, str], float | None]] = {
    "submit": submit_job,
    "poll": poll_job,
    "save": save_job,
}


@dataclass
class Pipeline:
    """A Runtime wired to the simulator, with an inline dispatcher and a driver loop."""

    rt: Runtime
    dispatch: InlineDispatcher
    sim: SimulatorServer

    def step(self) -> bool:
        """Run the next due task (waiting for it); False when nothing is left."""
        if not self.dispatch.heap:
            return False
        due = heapq.heappop(self.dispatch.heap)
        time.sleep(max(0.0, due.at_s - time.monotonic()))
        if due.kind == "webhook":
            countdown = deliver_webhook(self.rt, due.job_id, attempt=due.attempt)
        else:
            countdown = RUNNERS[due.kind](self.rt, due.job_id)
        if countdown is not None:
            heapq.heappush(
                self.dispatch.heap,
                Due(
                    time.monotonic() + countdown,
                    next(self.dispatch._seq),
                    due.kind,
                    due.job_id,
                    due.attempt + 1,
                ),
            )
        return True

    def drain(self, *, timeout_s: float = 20.0) -> None:
        """Run until nothing is scheduled; fail the test if that takes longer than timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self.step():
            assert time.monotonic() < deadline, "pipeline did not settle in time"

    def job(self, job_id: str) -> Job:
        job = self.rt.store.get(job_id)
        assert job is not None
        return job

    def stats(self) -> dict[str, Any]:
        return self.sim.stats(KEY)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    config = SimConfig(time_scale=0.01, rng_seed=1234)
    with running_simulator(config) as server:
        yield server


def make_settings(sim: SimulatorServer, output_dir: Path, **overrides: Any) -> Settings:
    options: dict[str, Any] = {**sim.settings_overrides(), **FAST, **overrides}
    return load_settings(bfl_api_key=KEY, output_dir=output_dir, **options)


@pytest.fixture
def make_pipeline(
    sim: SimulatorServer, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def factory(**overrides: Any) -> Pipeline:
        settings = make_settings(sim, tmp_path / "out", **overrides)
        dispatch = InlineDispatcher()
        rt = build_runtime(settings, redis_url=redis_url, dispatch=dispatch)
        made.append(Pipeline(rt=rt, dispatch=dispatch, sim=sim))
        return made[-1]

    yield factory
    for pipeline in made:
        pipeline.rt.close()


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    return make_pipeline()
