"""The simulator fixture, defined once: ``simulator_fixture(config, scope=...)`` makes it.

A conftest (or test module) names its own::

    sim = simulator_fixture(SimConfig(time_scale=0.01, rng_seed=99))            # per test
    sim_server = simulator_fixture(FAST, scope="session", name="sim_server")    # per session
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from fluxq.simulator.config import SimConfig
from fluxq.simulator.listeners import bind_loopback
from fluxq.simulator.server import SimulatorServer
from fluxq.testing import running_simulator
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.bfl.responses import Result

Scope = Literal["function", "class", "module", "package", "session"]

LONG = "fixed:100000"
"""A latency that keeps tasks Pending for the whole test (100 s wall-clock at time_scale 0.001)."""


def simulator_fixture(
    config: SimConfig,
    *,
    scope: Scope = "function",
    name: str = "sim",
    loopback_only: bool = False,
) -> Any:
    """A fixture named ``name`` yielding a simulator started with ``config`` for ``scope``, and
    stopped (threads joined, sockets closed) at its end.

    ``loopback_only`` binds all three listeners to 127.0.0.1 (on ports of their own) instead of
    the 127.0.0.2/3 aliases, for processes that must reach them as 127.0.0.1.
    """

    @pytest.fixture(scope=scope, name=name)
    def simulator() -> Iterator[SimulatorServer]:
        with contextlib.ExitStack() as stack:
            options: dict[str, Any] = {}
            if loopback_only:
                patch = stack.enter_context(pytest.MonkeyPatch.context())
                patch.setattr(
                    "fluxq.simulator.server.bind_alias",
                    lambda alias, host, port: bind_loopback(host, port),
                )
                options["host"] = "127.0.0.1"
            yield stack.enter_context(running_simulator(config, **options))

    return simulator


def wait_terminal(client: BFLClient, polling_url: str, *, timeout_s: float = 3.0) -> Result:
    """Poll ``polling_url`` every 2 ms until a terminal status (a few ms at time_scale 0.001)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = client.get_result(polling_url)
        if result.status.terminal or time.monotonic() > deadline:
            return result
        time.sleep(0.002)
