"""The active-task cap: 24 per account, 6 for flux-kontext-max inside it, and phantom 429s.

Tasks are kept Pending with a long latency; the clock is advanced to finish them.
"""

from __future__ import annotations

import pytest

from fluxq.config.errors import RateLimited
from fluxq.config.requests import FluxKontextProInputs, FluxPro11Inputs
from fluxq.simulator import SimulatorServer
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import LONG, wait_terminal


def _fill(client: BFLClient, endpoint: str, count: int) -> None:
    request = (
        FluxKontextProInputs(prompt="x") if "kontext" in endpoint else FluxPro11Inputs(prompt="x")
    )
    for _ in range(count):
        client.submit(endpoint, request)


def test_the_25th_active_task_gets_429_without_retry_after_by_default(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given 24 tasks that stay Pending
    sim.configure(latency={"default": LONG})
    _fill(client, "flux-pro-1.1", 24)
    # When a 25th is submitted
    with pytest.raises(RateLimited) as caught:
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # Then 429 with no Retry-After, and nothing is billed for it
    assert caught.value.retry_after_s is None
    stats = sim.stats(KEY)
    assert (stats["submits"], stats["rate_limited_429"], stats["active"]) == (24, 1, 24)
    assert stats["credits_spent"] == 24 * 4


def test_a_429_carries_retry_after_when_configured(sim: SimulatorServer, client: BFLClient) -> None:
    # Given Retry-After switched on and a full cap
    sim.configure(latency={"default": LONG}, retry_after_s=3)
    _fill(client, "flux-pro-1.1", 24)
    # When one more is submitted, Then the client reads the header
    with pytest.raises(RateLimited) as caught:
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    assert caught.value.retry_after_s == 3.0


def test_flux_kontext_max_is_capped_at_6_inside_the_24(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given 6 Pending flux-kontext-max tasks
    sim.configure(latency={"default": LONG})
    _fill(client, "flux-kontext-max", 6)
    # When a 7th kontext-max is submitted, Then 429
    with pytest.raises(RateLimited):
        client.submit("flux-kontext-max", FluxKontextProInputs(prompt="x"))
    # And other models still fill the account up to 24 in total, then 429 too
    _fill(client, "flux-pro-1.1", 18)
    with pytest.raises(RateLimited):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    stats = sim.stats(KEY)
    assert stats["max_active"] == 24
    assert stats["max_active_by_group"] == {"flux-kontext-max": 6}
    assert stats["active_by_group"] == {"flux-kontext-max": 6}


def test_a_full_account_with_kontext_max_at_6_refuses_kontext_max(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given 23 Pending flux-pro-1.1 tasks (one free slot overall)
    sim.configure(latency={"default": LONG})
    _fill(client, "flux-pro-1.1", 23)
    # When kontext-max takes the last slot, Then the next kontext-max hits the overall cap
    client.submit("flux-kontext-max", FluxKontextProInputs(prompt="x"))
    with pytest.raises(RateLimited):
        client.submit("flux-kontext-max", FluxKontextProInputs(prompt="x"))


def test_a_task_stops_counting_once_terminal_which_frees_its_slot(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a full cap of tasks that finish after 1000 model seconds (1 s)
    sim.configure(latency={"default": "fixed:1000"})
    _fill(client, "flux-pro-1.1", 24)
    with pytest.raises(RateLimited):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # When the clock passes their ready time
    sim.advance_clock(2.0)
    # Then the account has no active task and may submit again
    assert sim.stats(KEY)["active"] == 0
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    assert submitted.id


def test_moderated_requests_never_hold_a_slot(sim: SimulatorServer, client: BFLClient) -> None:
    # Given 24 Request Moderated submits (terminal at once)
    sim.configure(latency={"default": LONG})
    for _ in range(24):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="[request-moderated]"))
    # When another task is submitted, Then it is accepted
    assert client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x")).id
    assert sim.stats(KEY)["max_active"] == 1


def test_phantom_429s_come_despite_free_capacity(sim: SimulatorServer, client: BFLClient) -> None:
    # Given another client on the same key, simulated by phantom_429_rate=1
    sim.configure(phantom_429_rate=1.0)
    # When an idle account submits, Then 429 anyway
    with pytest.raises(RateLimited):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    stats = sim.stats(KEY)
    assert (stats["phantom_429"], stats["rate_limited_429"], stats["active"]) == (1, 1, 0)
    # And with the rate back at 0 the same submit goes through
    sim.configure(phantom_429_rate=0.0)
    result = wait_terminal(
        client, client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x")).polling_url
    )
    assert result.status is Status.READY


def test_the_cap_is_configurable(sim: SimulatorServer, client: BFLClient) -> None:
    # Given a cap of 2 (BFL's older docs said 12; it changes)
    sim.configure(active_cap=2, latency={"default": LONG})
    _fill(client, "flux-pro-1.1", 2)
    # When a third is submitted, Then 429
    with pytest.raises(RateLimited):
        client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
