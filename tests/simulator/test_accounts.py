"""Submitting: keys and accounts (403), credits and prices (402), the submit response's shape.

Driven through fluxq's BFLClient against the simulator's real loopback listeners.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fluxq.config.catalog import estimate_credits
from fluxq.config.errors import NotAuthorised, OutOfCredits
from fluxq.config.requests import Flux2Inputs, FluxPro11Inputs
from fluxq.simulator import SimulatorServer, account_label
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import wait_terminal


def test_a_submitted_task_becomes_ready_with_its_sample_prompt_and_seed(client: BFLClient) -> None:
    # Given a fast simulator
    # When a request with a seed is submitted and polled until terminal
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="a red fox", seed=42))
    result = wait_terminal(client, submitted.polling_url)
    # Then it is Ready with a sample URL, the prompt and the request's seed
    assert result.status is Status.READY
    assert result.raw_status == "Ready"
    assert result.sample_url is not None
    assert (result.prompt, result.seed, result.id) == ("a red fox", 42, submitted.id)


def test_the_submit_response_carries_id_polling_url_cost_and_megapixels(
    sim: SimulatorServer, raw: httpx.Client
) -> None:
    # Given a flux-2-pro request of 1440x1408 (1.93 MP: the second megapixel is charged whole)
    body = {"prompt": "a lake", "width": 1440, "height": 1408}
    # When it is POSTed
    response = raw.post(f"{sim.base_url}/v1/flux-2-pro", json=body, headers={"x-key": KEY})
    # Then the answer is BFL's AsyncResponse with the catalog's price
    data = response.json()
    assert response.status_code == 200
    assert set(data) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert data["cost"] == estimate_credits("flux-2-pro", Flux2Inputs.model_validate(body)) == 4.5
    assert data["output_mp"] == 1.93
    assert data["input_mp"] == 0.0


def test_a_request_without_a_seed_gets_a_random_seed_chosen_at_submit(client: BFLClient) -> None:
    # Given two identical requests without a seed
    request = FluxPro11Inputs(prompt="same prompt")
    # When both run to completion
    first = wait_terminal(client, client.submit("flux-pro-1.1", request).polling_url)
    second = wait_terminal(client, client.submit("flux-pro-1.1", request).polling_url)
    # Then each result reports a seed, and they differ
    assert first.seed is not None
    assert second.seed is not None
    assert first.seed != second.seed


def test_a_missing_key_is_refused_with_403_not_authenticated(
    sim: SimulatorServer, client_for: Callable[..., BFLClient], raw: httpx.Client
) -> None:
    # Given a client without a key
    keyless = client_for(bfl_api_key=None)
    # When it submits, Then fluxq sees NotAuthorised
    with pytest.raises(NotAuthorised):
        keyless.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # And the body is FastAPI's, for an empty key too
    for headers in ({}, {"x-key": ""}):
        response = raw.post(
            f"{sim.base_url}/v1/flux-pro-1.1", json={"prompt": "x"}, headers=headers
        )
        assert (response.status_code, response.json()) == (403, {"detail": "Not authenticated"})
    assert sim.stats()["counters"]["forbidden_403"] == 3


def test_the_key_header_name_is_case_insensitive(sim: SimulatorServer, raw: httpx.Client) -> None:
    # Given the header spelled X-KEY
    headers = {"X-KEY": KEY}
    # When submitting, Then the key is accepted and billed to KEY's account
    response = raw.post(f"{sim.base_url}/v1/flux-pro-1.1", json={"prompt": "x"}, headers=headers)
    assert response.status_code == 200
    assert sim.stats(KEY)["submits"] == 1


def test_only_allowed_keys_are_accepted_when_a_list_is_configured(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    # Given an allowed-keys list holding only KEY
    sim.configure(allowed_keys=[KEY])
    # When another key submits, Then it gets 403; KEY still works
    with pytest.raises(NotAuthorised):
        client_for(bfl_api_key="intruder").submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    assert client_for().submit("flux-pro-1.1", FluxPro11Inputs(prompt="x")).id


def test_each_key_is_its_own_account_with_its_own_balance(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    # Given two keys
    alice, bob = client_for(bfl_api_key="alice"), client_for(bfl_api_key="bob")
    # When only alice submits a 4-credit request
    alice.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # Then only alice's balance went down, and stats show both under non-secret labels
    assert alice.credits() == sim.simulator.config.initial_credits - 4
    assert bob.credits() == sim.simulator.config.initial_credits
    accounts = sim.stats()["accounts"]
    assert set(accounts) == {account_label("alice"), account_label("bob")}
    assert accounts[account_label("alice")]["credits_spent"] == 4


def test_a_short_balance_gets_402_and_is_not_billed(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given an account holding 5 credits
    sim.set_credits(KEY, 5)
    # When an 8-credit flux-kontext-max request is submitted
    # Then fluxq sees OutOfCredits and nothing is charged
    with pytest.raises(OutOfCredits):
        client.submit_json("flux-kontext-max", {"prompt": "x"})
    assert client.credits() == 5
    # And a 4-credit request still fits, leaving 1
    client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    assert client.credits() == 1
    stats = sim.stats(KEY)
    assert (stats["payment_required_402"], stats["submits"]) == (1, 1)


def test_credits_set_over_http_become_the_balance(sim: SimulatorServer, raw: httpx.Client) -> None:
    # Given /sim/credits called with KEY
    response = raw.post(
        f"{sim.base_url}/sim/credits", json={"credits": 12.5}, headers={"x-key": KEY}
    )
    # When the balance is read, Then it is the value set
    assert response.status_code == 200
    balance = raw.get(f"{sim.base_url}/v1/credits", headers={"x-key": KEY})
    assert balance.json() == {"credits": 12.5}


def test_new_accounts_start_with_the_configured_initial_credits(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given initial_credits of 3
    sim.configure(initial_credits=3)
    # When a new account asks, Then it has 3; a 4-credit submit is refused
    assert client.credits() == 3
    with pytest.raises(OutOfCredits):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))


def test_polling_needs_no_key_unless_configured(
    sim: SimulatorServer, client: BFLClient, client_for: Callable[..., BFLClient]
) -> None:
    # Given a task, and a keyless client (the spec puts no security on get_result)
    polling_url = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x")).polling_url
    keyless = client_for(bfl_api_key=None)
    # When it polls, Then it gets the result; with get_result_requires_key, a 403
    assert keyless.get_result(polling_url).status is not Status.UNKNOWN
    sim.configure(get_result_requires_key=True)
    with pytest.raises(NotAuthorised):
        keyless.get_result(polling_url)
    assert client.get_result(polling_url).status is not Status.UNKNOWN
