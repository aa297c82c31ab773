"""Fixtures: one simulator on real loopback listeners per session, reset to a fast config per test.

Clients are fluxq's own BFLClient, so each test proves the simulator and the client together.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fluxq.config.settings import Settings, load_settings
from fluxq.simulator import SimConfig, SimulatorServer
from fluxq.workers.bfl.client import BFLClient
from fluxq.workers.bfl.responses import Result

KEY = "test-key-0123456789"
"""The default x-key of the tests' client."""

FAST = SimConfig(time_scale=0.001, rng_seed=1234)
"""Every test starts from this: a "4 s" model takes 4 ms."""

LONG = "fixed:100000"
"""A latency that keeps tasks Pending for the whole test (100 s wall-clock at time_scale 0.001)."""


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimulatorServer]:
    """The simulator's three listeners, stopped (thread joined, sockets closed) at session end."""
    with SimulatorServer(FAST) as server:
        yield server


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


def wait_terminal(client: BFLClient, polling_url: str, *, timeout_s: float = 3.0) -> Result:
    """Poll ``polling_url`` every 2 ms until a terminal status (a few ms at time_scale 0.001)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = client.get_result(polling_url)
        if result.status.terminal or time.monotonic() > deadline:
            return result
        time.sleep(0.002)


@dataclass
class Received:
    """One webhook request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A loopback HTTP server recording POSTs; answers ``statuses`` in turn, then 200."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, item: Received) -> int:
        with self._cond:
            self.received.append(item)
            self._cond.notify_all()
            return self.statuses.pop(0) if self.statuses else 200

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Block until ``count`` requests arrived (or fail the test)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= count, timeout_s):
                pytest.fail(f"expected {count} webhook(s), got {len(self.received)}")
            return list(self.received)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A tiny receiver on a free loopback port, shut down and joined at teardown."""
    holder: list[WebhookReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            item = Received(
                self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
            )
            status = holder[0].record(item)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    holder.append(WebhookReceiver(url=f"http://{host!s}:{port}/hook"))
    thread = threading.Thread(
        target=server.serve_forever, args=(0.01,), name="webhook-receiver", daemon=True
    )
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join(5)
