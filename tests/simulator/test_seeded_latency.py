"""Seeded per-job latency and the per-task timeline: what the throughput benchmark relies on.

With ``latency_seed`` set, a prompt's duration is the same for every account and every simulator,
so two clients are compared on identical jobs; ``/sim/timeline`` shows what each task went through.
"""

from __future__ import annotations

import httpx
import pytest

from fluxq.config.requests import FluxDevInputs
from fluxq.simulator import SimConfig, Simulator, SimulatorServer, account_label
from fluxq.simulator.latency import parse_latency, seeded_duration_s
from fluxq.simulator.submit import submit
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY
from tests.support.simulator import wait_terminal

LATENCY = parse_latency("flux-dev=lognormal:5:9.6")
"""Long-tailed, so different prompts almost surely draw different durations."""

SCALE = 0.001

BASES = {"polling_base": "http://127.0.0.1:1", "delivery_base": "http://127.0.0.1:2"}
"""In-process submits are never polled: the URLs they would hand out do not matter."""


def _durations(sim: Simulator, key: str, prompts: list[str]) -> dict[str, float]:
    """Submit each prompt in-process and read its duration back from the timeline."""
    for prompt in prompts:
        reply = submit(sim, key, "flux-dev", {"prompt": prompt}, **BASES)
        assert reply.status_code == 200
    tasks = sim.timeline(account_label(key))["tasks"]
    return {task["prompt"]: task["duration_s"] for task in tasks}


def _seeded(seed: int) -> Simulator:
    return Simulator(SimConfig(latency=LATENCY, latency_seed=seed, time_scale=SCALE))


def test_a_prompt_takes_as_long_on_every_simulator_and_account() -> None:
    # Given two simulators with the same latency seed, and two accounts on the first
    prompts = [f"bench job {i}" for i in range(10)]
    first, second = _seeded(7), _seeded(7)
    # When the same prompts are submitted by three clients
    a = _durations(first, "key-a", prompts)
    b = _durations(first, "key-b", list(reversed(prompts)))
    c = _durations(second, "key-c", prompts)
    # Then each prompt took the same time everywhere: the pure function's value, time-scaled
    expected = {p: seeded_duration_s(7, "flux-dev", p, LATENCY) * SCALE for p in prompts}
    assert a == b == c
    assert a == pytest.approx(expected, rel=1e-9)


def test_different_prompts_and_seeds_draw_different_durations() -> None:
    # Given ten prompts on one seed, and the same prompts on another seed
    prompts = [f"bench job {i}" for i in range(10)]
    one = _durations(_seeded(1), "key", prompts)
    other = _durations(_seeded(2), "key", prompts)
    # Then the prompts' durations differ from each other and from the other seed's
    assert len(set(one.values())) == len(prompts)
    assert all(one[p] != other[p] for p in prompts)


def test_without_a_latency_seed_the_simulator_dice_decide() -> None:
    # Given no latency seed, When one prompt is submitted five times
    sim = Simulator(SimConfig(latency=LATENCY, time_scale=SCALE, rng_seed=3))
    for _ in range(5):
        submit(sim, "key", "flux-dev", {"prompt": "same"}, **BASES)
    # Then the durations differ, as before latency_seed existed
    durations = [t["duration_s"] for t in sim.timeline()["tasks"]]
    assert len(set(durations)) == 5


def test_timeline_records_creation_readiness_polls_detection_and_download(
    sim: SimulatorServer, client: BFLClient, raw: httpx.Client
) -> None:
    # Given a 100 ms task (100 model seconds at time_scale 0.001)
    sim.configure(latency={"flux-dev": "fixed:100"}, latency_seed=1)
    submitted = client.submit("flux-dev", FluxDevInputs(prompt="timed"))
    # When it is polled until Ready, once more, and its sample downloaded
    result = wait_terminal(client, submitted.polling_url)
    client.get_result(submitted.polling_url)
    assert result.sample_url is not None
    raw.get(result.sample_url).raise_for_status()
    # Then the timeline (over HTTP, filtered by label) holds its times in order and its polls
    body = raw.get(f"{sim.base_url}/sim/timeline", params={"account": account_label(KEY)}).json()
    (task,) = body["tasks"]
    assert task["id"] == submitted.id
    assert task["account"] == account_label(KEY)
    assert (task["endpoint"], task["prompt"], task["outcome"]) == ("flux-dev", "timed", "Ready")
    assert task["duration_s"] == pytest.approx(0.1)
    assert task["ready_at"] - task["created_at"] == pytest.approx(task["duration_s"], abs=1e-6)
    assert task["polls"] == sim.stats(KEY)["polls"] >= 2
    assert task["created_at"] < task["ready_at"] <= task["first_terminal_poll_at"]
    assert task["first_terminal_poll_at"] <= task["first_download_at"]


def test_timeline_leaves_unpolled_times_empty_and_other_accounts_out(
    sim: SimulatorServer, raw: httpx.Client
) -> None:
    # Given a task of another account, never polled nor downloaded
    raw.post(
        f"{sim.base_url}/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "other-key"}
    ).raise_for_status()
    # When KEY's timeline and the whole one are read
    mine = raw.get(f"{sim.base_url}/sim/timeline", params={"account": account_label(KEY)}).json()
    everyone = raw.get(f"{sim.base_url}/sim/timeline").json()
    # Then KEY has none, and the other's task has no poll, detection or download yet
    assert mine == {"tasks": []}
    (task,) = everyone["tasks"]
    assert task["polls"] == 0
    assert task["first_terminal_poll_at"] is None
    assert task["first_download_at"] is None
