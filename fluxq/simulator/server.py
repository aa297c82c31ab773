"""Run the simulator's three listeners (API, polling host, delivery) with uvicorn on loopback.

``SimulatorServer`` runs them in a background thread for tests; ``serve`` blocks, for the CLI.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Self

import uvicorn

from fluxq.simulator.accounts import account_label
from fluxq.simulator.app import Role, create_app
from fluxq.simulator.clock import ListenerURLs
from fluxq.simulator.config import SimConfig
from fluxq.simulator.engine import Simulator
from fluxq.simulator.listeners import (
    DELIVERY_HOST_ALIAS,
    POLLING_HOST_ALIAS,
    bind_alias,
    bind_loopback,
    check_loopback,
    quiet_injected_drops,
    socket_url,
)

STARTUP_TIMEOUT_S = 10.0
"""How long ``start`` waits for all three listeners to accept connections."""

SHUTDOWN_TIMEOUT_S = 10.0
"""How long ``stop`` waits for the server thread to finish."""


class SimulatorServer:
    """The simulator on three loopback listeners, served from one background thread."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        polling_port: int | None = None,
        delivery_port: int | None = None,
        log_level: str = "warning",
    ) -> None:
        self.host = check_loopback(host)
        self._ports = (port, polling_port, delivery_port)
        self._log_level = log_level
        self.simulator = Simulator(config)
        self._servers: list[uvicorn.Server] = []
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.urls: ListenerURLs | None = None

    @property
    def base_url(self) -> str:
        """The API listener's URL: what FLUXQ_BFL_BASE_URL should be."""
        return self._require_urls().api

    def _require_urls(self) -> ListenerURLs:
        if self.urls is None:
            raise RuntimeError("the simulator is not running: call start() first")
        return self.urls

    def start(self) -> Self:
        """Bind all listeners and serve them; returns once every one accepts connections."""
        if self._thread is not None:
            raise RuntimeError("already started")
        port, polling_port, delivery_port = self._ports
        follow = (lambda n: port + n) if port else (lambda n: 0)
        api = bind_loopback(self.host, port)
        try:
            polling = bind_alias(POLLING_HOST_ALIAS, self.host, polling_port or follow(1))
            self._sockets = [api, polling]
            delivery = bind_alias(DELIVERY_HOST_ALIAS, self.host, delivery_port or follow(2))
            self._sockets.append(delivery)
        except OSError:
            for sock in (api, *self._sockets[1:]):
                sock.close()
            self._sockets = []
            raise
        quiet_injected_drops()
        self.urls = ListenerURLs(socket_url(api), socket_url(polling), socket_url(delivery))
        self.simulator.urls = self.urls
        roles: tuple[Role, ...] = ("api", "polling", "delivery")
        self._servers = [uvicorn.Server(self._uvicorn_config(role)) for role in roles]
        self._thread = threading.Thread(target=self._run, name="fluxq-bfl-simulator", daemon=True)
        self._thread.start()
        self._wait_started()
        return self

    def _uvicorn_config(self, role: Role) -> uvicorn.Config:
        app = create_app(simulator=self.simulator, role=role)
        return uvicorn.Config(
            app,
            http="h11",
            loop="asyncio",
            lifespan="on" if role == "api" else "off",
            log_config=None,
            log_level=self._log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
        )

    def _run(self) -> None:
        async def serve_all() -> None:
            pairs = zip(self._servers, self._sockets, strict=True)
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in pairs))

        try:
            asyncio.run(serve_all())
        except BaseException as exc:  # reported to the starting thread by _wait_started
            self._error = exc

    def _wait_started(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(server.started for server in self._servers):
            if self._error is not None or (self._thread and not self._thread.is_alive()):
                self.stop()
                raise RuntimeError(f"simulator failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("simulator listeners did not start in time")
            time.sleep(0.005)

    @property
    def running(self) -> bool:
        """True while the listeners' thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop every listener and join the thread; safe to call twice."""
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(SHUTDOWN_TIMEOUT_S)
            if self._thread.is_alive():
                for server in self._servers:
                    server.force_exit = True
                self._thread.join(SHUTDOWN_TIMEOUT_S)
        for sock in self._sockets:
            sock.close()
        self._thread = None
        self._servers = []
        self._sockets = []

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self, key: str | None = None) -> dict[str, Any]:
        """All counters, or one key's account counters when ``key`` is given."""
        if key is None:
            return self.simulator.stats()
        return self.simulator.account_stats(key)

    def label(self, key: str) -> str:
        """The label ``key``'s account is reported under."""
        return account_label(key)

    def reset(self) -> None:
        """Forget tasks, accounts and counters (the config stays)."""
        self.simulator.reset()

    def configure(self, **knobs: Any) -> SimConfig:
        """Change SimConfig fields at runtime; raises ValidationError naming bad ones."""
        return self.simulator.configure(knobs)

    def set_credits(self, key: str, credits: float) -> None:
        """Set the balance of ``key``'s account."""
        self.simulator.set_credits(key, credits)

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator's clock forward: expires URLs and results without waiting."""
        self.simulator.clock.advance(seconds)

    def settings_overrides(self) -> dict[str, Any]:
        """Keyword arguments for ``config.settings.load_settings`` to point fluxq here."""
        urls = self._require_urls()
        return {"bfl_base_url": urls.api, "allowed_urls": [urls.polling, urls.delivery]}

    def env(self) -> dict[str, str]:
        """The same as environment variables (without BFL_API_KEY: any non-empty key works)."""
        urls = self._require_urls()
        return {
            "FLUXQ_BFL_BASE_URL": urls.api,
            "FLUXQ_ALLOWED_URLS": f"{urls.polling},{urls.delivery}",
        }


@contextmanager
def running_simulator(config: SimConfig | None = None, **options: Any) -> Iterator[SimulatorServer]:
    """Run a SimulatorServer for the ``with`` block; ``options`` go to its constructor."""
    server = SimulatorServer(config, **options).start()
    try:
        yield server
    finally:
        server.stop()


def serve(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    polling_port: int | None = None,
    delivery_port: int | None = None,
    log_level: str = "info",
    out: Callable[[str], object] = print,
    stop: threading.Event | None = None,
) -> None:
    """Run the simulator until Ctrl-C, SIGTERM or ``stop``, printing how to point fluxq at it.

    With ``port`` fixed, the polling and delivery listeners take ``port + 1`` and ``port + 2``
    (0: free ports). The printed lines are ``export FLUXQ_BFL_BASE_URL=...`` and
    ``export FLUXQ_ALLOWED_URLS=...``, ready to paste into a shell.
    """
    server = SimulatorServer(
        config,
        host=host,
        port=port,
        polling_port=polling_port,
        delivery_port=delivery_port,
        log_level=log_level,
    ).start()
    stop = stop if stop is not None else threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_signal)
    urls = server.urls
    assert urls is not None
    out(f"BFL simulator: API {urls.api}  polling {urls.polling}  delivery {urls.delivery}")
    for name, value in server.env().items():
        out(f"export {name}={value}")
    out("export BFL_API_KEY=sim-key   # any non-empty key works; Ctrl-C stops the simulator")
    try:
        while not stop.is_set() and server.running:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
