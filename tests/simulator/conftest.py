"""Fixtures: one simulator on real loopback listeners per session, reset to a fast config per test.

Clients are fluxq's own BFLClient, so each test proves the simulator and the client together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from fluxq.config.settings import Settings, load_settings
from fluxq.simulator import SimConfig, SimulatorServer
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY
from tests.support.simulator import simulator_fixture
from tests.support.webhooks import webhook_receiver  # noqa: F401 - a fixture, found by name

FAST = SimConfig(time_scale=0.001, rng_seed=1234)
"""Every test starts from this: a "4 s" model takes 4 ms."""


sim_server = simulator_fixture(FAST, scope="session", name="sim_server")
"""The simulator's three listeners, stopped (thread joined, sockets closed) at session end."""


@pytest.fixture
def sim(sim_server: SimulatorServer) -> SimulatorServer:
    """The shared simulator with no tasks, no accounts and the FAST config."""
    sim_server.simulator.configure(dict(FAST))
    sim_server.reset()
    return sim_server


@pytest.fixture
def settings_for(sim: SimulatorServer) -> Callable[..., Settings]:
    """Build fluxq Settings pointing at the simulator; keyword arguments override."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"bfl_api_key": KEY, **sim.settings_overrides()}
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def client_for(settings_for: Callable[..., Settings]) -> Iterator[Callable[..., BFLClient]]:
    """Open BFLClients (closed at teardown) with the given settings overrides."""
    opened: list[BFLClient] = []

    def open_client(**overrides: Any) -> BFLClient:
        client = BFLClient(settings_for(**overrides))
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture
def client(client_for: Callable[..., BFLClient]) -> BFLClient:
    """A BFLClient using KEY."""
    return client_for()


@pytest.fixture
def raw() -> Iterator[httpx.Client]:
    """A plain httpx client, for what BFLClient deliberately hides (bodies, headers)."""
    with httpx.Client(timeout=5.0) as http:
        yield http
