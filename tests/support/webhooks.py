"""A loopback HTTP server that records webhook POSTs (the simulator's and fluxq's)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


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
