"""``fluxq.testing`` as a user's own test suite uses it: their Redis, the simulator, a job run
inline from enqueue to its file on disk; no broker, no worker process, no BFL account."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fluxq.config.settings import load_settings
from fluxq.tasks.enqueue import enqueue
from fluxq.testing import InlineDispatcher, SimConfig, inline_runtime, running_simulator
from fluxq.workers.state.jobs import State


def test_a_users_test_runs_a_job_to_its_file_with_the_simulator_and_no_broker(
    redis_url: str, tmp_path: Path
) -> None:
    # Given the simulator and a Runtime on the test's Redis whose tasks run inline
    with running_simulator(SimConfig(time_scale=0.01, rng_seed=7)) as sim:
        settings = load_settings(
            bfl_api_key="my-test-key", output_dir=tmp_path / "out", **sim.settings_overrides()
        )
        with inline_runtime(settings, redis_url=redis_url) as inline:
            # When a job is enqueued and the queue is run until nothing is left to do
            job_id = enqueue(inline.runtime, "flux-dev", {"prompt": "a heron at dawn", "seed": 1})
            ran = inline.run_until_idle(timeout_s=30)
            # Then the job is done, its image is on disk, and each step was sent once, in order
            job = inline.job(job_id)
            assert job.state is State.DONE, job.reason
            assert job.path is not None
            assert Path(job.path).is_file()
            assert Path(job.path).is_relative_to(tmp_path / "out")
            kinds = inline.dispatcher.kinds(job_id)
            assert (kinds[0], kinds[-1]) == ("submit", "save"), kinds
            assert ran >= len(kinds)
            assert inline.dispatcher.idle
            assert sim.stats("my-test-key")["submits"] == 1


def test_a_dispatcher_records_what_it_would_send_and_runs_it_only_when_asked(
    redis_url: str, tmp_path: Path
) -> None:
    settings = load_settings(bfl_api_key="my-test-key", output_dir=tmp_path / "out")
    dispatcher = InlineDispatcher()
    with inline_runtime(settings, redis_url=redis_url, dispatcher=dispatcher) as inline:
        job_id = enqueue(inline.runtime, "flux-dev", {"prompt": "a quiet room"})
        # Enqueue admits the job and sends its submit: recorded, not run
        assert dispatcher.kinds(job_id) == ["submit"]
        assert [due.kind for due in dispatcher.heap] == ["submit"]
        assert inline.job(job_id).state is State.ADMITTED
        with pytest.raises(KeyError):
            inline.job("no-such-job")


def test_inline_runtime_needs_a_redis_url(tmp_path: Path) -> None:
    settings = load_settings(bfl_api_key="my-test-key", output_dir=tmp_path, redis_url=None)
    with pytest.raises(ValueError, match="Redis URL"):
        inline_runtime(settings)


def test_fluxq_testing_does_not_import_pytest() -> None:
    code = "import sys, fluxq.testing; print('pytest' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False", out.stderr
