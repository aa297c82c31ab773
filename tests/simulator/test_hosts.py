"""Hosts: the polling URL names another host, the API host does not know its tasks; loopback.

Also: the listeners bind loopback only and stop without leaving threads or ports.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from fluxq.config.errors import DisallowedURL
from fluxq.config.requests import FluxPro11Inputs
from fluxq.config.settings import Settings
from fluxq.simulator import SimConfig, SimulatorServer, running_simulator, serve
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import wait_terminal


def test_the_polling_url_names_another_host_and_port(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a submit to the API listener
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # When its polling URL is compared with the base URL
    api, polling = urlsplit(sim.base_url), urlsplit(submitted.polling_url)
    # Then host:port differ, and the URL polls fine verbatim
    assert (polling.hostname, polling.port) != (api.hostname, api.port)
    assert polling.path == "/v1/get_result"
    assert polling.query == f"id={submitted.id}"
    assert wait_terminal(client, submitted.polling_url).status is Status.READY


def test_a_rebuilt_polling_url_on_the_api_host_answers_task_not_found(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a task that lives on the polling host (strict_polling_host is on by default)
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    wait_terminal(client, submitted.polling_url)
    # When a client rebuilds the URL from its base URL instead of using polling_url
    result = client.get_result_by_id(submitted.id)
    # Then the API host has never heard of the task; stats show the wrong-host poll
    assert result.status is Status.TASK_NOT_FOUND
    assert sim.stats(KEY)["polls_wrong_host"] == 1


def test_the_api_host_serves_results_when_strict_polling_host_is_off(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given strict_polling_host off
    sim.configure(strict_polling_host=False)
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    wait_terminal(client, submitted.polling_url)
    # When polled by id on the API host, Then the result is there
    assert client.get_result_by_id(submitted.id).status is Status.READY


def test_fluxq_refuses_polling_hosts_it_was_not_told_about(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    # Given fluxq allowed only BFL's real hosts
    client = client_for(allowed_urls=["https://*.bfl.ai"])
    submitted = client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))
    # When it polls the simulator's polling host, Then its URL guard refuses
    with pytest.raises(DisallowedURL):
        client.get_result(submitted.polling_url)


def test_settings_overrides_allow_the_polling_and_delivery_hosts(
    sim: SimulatorServer, settings_for: Callable[..., Settings]
) -> None:
    # Given fluxq settings built from the simulator's overrides
    settings = settings_for()
    urls = sim.urls
    assert urls is not None
    # Then every listener's URL is allowed, and env() says the same
    assert all(settings.url_allowed(f"{u}/v1/get_result?id=1") for u in (urls.api, urls.polling))
    assert settings.url_allowed(f"{urls.delivery}/sample/x.jpeg")
    assert sim.env()["FLUXQ_ALLOWED_URLS"] == f"{urls.polling},{urls.delivery}"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_the_simulator_refuses_to_bind_anything_but_loopback(host: str) -> None:
    # Given a non-loopback host, When a server is built, Then it refuses
    with pytest.raises(ValueError, match="loopback"):
        SimulatorServer(host=host)


def test_a_stopped_simulator_leaves_no_thread_and_no_listening_port() -> None:
    # Given a simulator started and stopped by its context manager
    with running_simulator(SimConfig(time_scale=0.001)) as server:
        urls = server.urls
        assert urls is not None
        assert server.running
    # Then its thread is gone and its ports refuse connections
    assert not server.running
    for url in (urls.api, urls.polling, urls.delivery):
        parts = urlsplit(url)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((parts.hostname, parts.port), timeout=1).close()


def test_serve_prints_the_settings_for_fluxq_and_stops_when_asked() -> None:
    # Given serve() running in a thread on free ports
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        kwargs={
            "config": SimConfig(),
            "port": 0,
            "out": lines.append,
            "stop": stop,
            "log_level": "warning",
        },
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not any(line.startswith("export FLUXQ_ALLOWED_URLS=") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.005)
        # When the printed base URL is used with any key
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in lines if "FLUXQ_" in line
        )
        response = httpx.get(
            f"{exports['FLUXQ_BFL_BASE_URL']}/v1/credits", headers={"x-key": "any"}
        )
        # Then it answers, and the allowed URLs name two other loopback listeners
        assert response.json() == {"credits": SimConfig().initial_credits}
        assert len(exports["FLUXQ_ALLOWED_URLS"].split(",")) == 2
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
