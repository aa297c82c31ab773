"""Pipeline tests without a broker: the real task logic, a real Redis, the simulator over loopback.

fluxq.testing's InlineDispatcher runs the chain (submit → poll → save → notify) in the test
thread, honouring countdowns, so each outcome can be driven step by step and judged by the
simulator's own counters. A conftest takes the fixtures by importing them::

    from tests.support.pipeline import make_pipeline, pipeline, sim  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fluxq.config.settings import Settings, load_settings
from fluxq.simulator.config import SimConfig
from fluxq.simulator.server import SimulatorServer
from fluxq.testing import InlineDispatcher
from fluxq.workers.runtime import Runtime, build_runtime
from fluxq.workers.state.jobs import Job
from tests.support.env import KEY
from tests.support.simulator import simulator_fixture

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
"""Settings every pipeline starts from: short polls, backoffs and timeouts."""

PIPELINE_SIM = SimConfig(time_scale=0.01, rng_seed=1234)
"""A fresh simulator per test: a "4 s" model takes 40 ms; reproducible dice."""

sim = simulator_fixture(PIPELINE_SIM)


@dataclass
class Pipeline:
    """A Runtime wired to the simulator, with an inline dispatcher and a driver loop."""

    rt: Runtime
    dispatch: InlineDispatcher
    sim: SimulatorServer

    def step(self) -> bool:
        """Run the next due task (waiting for it); False when nothing is left."""
        return self.dispatch.step(self.rt)

    def drain(self, *, timeout_s: float = 20.0) -> None:
        """Run until nothing is scheduled; fail the test if that takes longer than timeout_s."""
        try:
            self.dispatch.run_until_idle(self.rt, timeout_s=timeout_s)
        except TimeoutError as exc:
            pytest.fail(f"pipeline did not settle in time: {exc}")

    def job(self, job_id: str) -> Job:
        job = self.rt.store.get(job_id)
        assert job is not None
        return job

    def stats(self) -> dict[str, Any]:
        return self.sim.stats(KEY)


def make_settings(sim: SimulatorServer, output_dir: Path, **overrides: Any) -> Settings:
    options: dict[str, Any] = {**sim.settings_overrides(), **FAST, **overrides}
    return load_settings(bfl_api_key=KEY, output_dir=output_dir, **options)


@pytest.fixture
def make_pipeline(
    sim: SimulatorServer, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Pipeline]]:
    """``make_pipeline(**settings)``: a Pipeline on the test's simulator and flushed Redis."""
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
