"""The simulator's own truth: /sim/stats counters, /sim/reset, /sim/config and /sim/clock.

Counters are checked through SimulatorServer.stats and over HTTP alike.
"""

from __future__ import annotations

import json

import httpx

from fluxq.config.requests import FluxPro11Inputs
from fluxq.simulator import SimulatorServer, account_label
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY
from tests.support.simulator import LONG, wait_terminal


def test_stats_show_duplicate_prompt_seed_endpoint_submits(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given the same (prompt, seed, endpoint) submitted three times, and another seed once
    for seed in (1, 1, 1, 2):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="twice", seed=seed))
    # When stats are read
    stats = sim.stats(KEY)
    # Then two extra submits are duplicates of one triple
    assert stats["submits"] == 4
    assert stats["duplicate_submits"] == 2
    assert stats["duplicates"] == [
        {"prompt": "twice", "seed": 1, "endpoint": "flux-pro-1.1", "count": 3}
    ]


def test_stats_count_polls_per_task_and_downloads(sim: SimulatorServer, client: BFLClient) -> None:
    # Given a task polled until Ready, then three more times, and its sample downloaded
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    result = wait_terminal(client, submitted.polling_url)
    for _ in range(3):
        client.get_result(submitted.polling_url)
    assert result.sample_url is not None
    httpx.get(result.sample_url).raise_for_status()
    # When stats are read, Then polls, the per-task maximum and downloads add up
    stats = sim.stats(KEY)
    assert stats["polls"] == stats["max_polls_per_task"] >= 4
    assert stats["downloads"] == 1


def test_stats_over_http_are_keyed_by_label_never_by_key(
    sim: SimulatorServer, raw: httpx.Client, client: BFLClient
) -> None:
    # Given one submit by KEY
    client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # When GET /sim/stats is read, whole and filtered by label
    whole = raw.get(f"{sim.base_url}/sim/stats")
    one = raw.get(f"{sim.base_url}/sim/stats", params={"account": account_label(KEY)})
    # Then the account appears under its 12-hex label and the key appears nowhere
    assert list(whole.json()["accounts"]) == [account_label(KEY)]
    assert one.json()["accounts"][account_label(KEY)]["submits"] == 1
    assert KEY not in whole.text


def test_reset_forgets_tasks_accounts_and_counters(
    sim: SimulatorServer, raw: httpx.Client, client: BFLClient
) -> None:
    # Given a Pending task and some counters
    sim.configure(latency={"default": LONG})
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    client.get_result_by_id("nope")
    # When POST /sim/reset is called
    assert raw.post(f"{sim.base_url}/sim/reset").status_code == 200
    # Then the task is gone and stats are empty
    assert client.get_result(submitted.polling_url).raw_status == "Task not found"
    stats = sim.stats()
    assert stats["accounts"] == {}
    assert stats["tasks_stored"] == 0
    assert stats["counters"] == {"polls_unknown_id": 1}


def test_config_is_patched_at_runtime_over_http(
    sim: SimulatorServer, raw: httpx.Client, client: BFLClient
) -> None:
    # Given POST /sim/config with a fault rate and a latency in CLI form
    patch = {"submit_503_rate": 1.0, "latency": {"flux-dev": "uniform:1:2"}}
    response = raw.post(f"{sim.base_url}/sim/config", json=patch)
    # Then the new config is returned and in force
    assert response.status_code == 200
    assert response.json()["submit_503_rate"] == 1.0
    assert response.json()["latency"]["flux-dev"] == {
        "kind": "uniform",
        "low_s": 1.0,
        "high_s": 2.0,
    }
    assert raw.get(f"{sim.base_url}/sim/config").json()["submit_503_rate"] == 1.0


def test_a_bad_config_patch_is_refused_naming_each_bad_field(
    sim: SimulatorServer, raw: httpx.Client
) -> None:
    # Given a patch with an unknown knob and an out-of-range rate
    patch = {"no_such_knob": 1, "poll_500_rate": 2}
    # When POSTed, Then 422 names both, and nothing changed
    response = raw.post(f"{sim.base_url}/sim/config", json=patch)
    assert response.status_code == 422
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {
        ("no_such_knob",),
        ("poll_500_rate",),
    }
    assert sim.simulator.config.poll_500_rate == 0.0


def test_allowed_keys_are_masked_in_the_shown_config(
    sim: SimulatorServer, raw: httpx.Client
) -> None:
    # Given an allowed-keys list
    sim.configure(allowed_keys=[KEY])
    # When GET /sim/config is read, Then the key is masked
    shown = raw.get(f"{sim.base_url}/sim/config").text
    assert KEY not in shown
    assert json.loads(shown)["allowed_keys"] == ["**********"]


def test_the_clock_can_be_advanced_over_http(
    sim: SimulatorServer, raw: httpx.Client, client: BFLClient
) -> None:
    # Given a long task
    sim.configure(latency={"default": "fixed:1000"})
    polling_url = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x")).polling_url
    # When POST /sim/clock moves 2 s ahead, Then the task is Ready
    response = raw.post(f"{sim.base_url}/sim/clock", json={"seconds": 2})
    assert response.status_code == 200
    assert client.get_result(polling_url).raw_status == "Ready"
