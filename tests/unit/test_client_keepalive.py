"""The keep-alive race, played by a loopback server: an idle connection the server has decided to
close takes a POST and closes without answering. fluxq's client must not send on it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fluxq.config.errors import OutcomeUnknown
from fluxq.config.settings import Settings
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY

IDLE_CLOSE_S = 0.5
"""The server's idle timeout: a request arriving on a connection idle this long is not answered."""

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
BODY = b'{"id": "t1", "polling_url": "http://127.0.0.1/v1/get_result?id=t1"}'


class RacingServer:
    """HTTP/1.1 keep-alive on 127.0.0.1 that counts connections and answers every request,
    except one arriving after IDLE_CLOSE_S of idleness: that connection is closed unanswered
    (the request crossed the server's FIN)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.unanswered = 0
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        last = time.monotonic()
        with conn:
            buffer = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                head, sep, rest = buffer.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                if len(rest) < length:
                    continue
                buffer = rest[length:]
                if time.monotonic() - last >= IDLE_CLOSE_S:
                    self.unanswered += 1
                    return  # closed under the request: no answer
                conn.sendall(ANSWER % (len(BODY), BODY))
                last = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join()
        self.sock.close()


@pytest.fixture
def server() -> Iterator[RacingServer]:
    racing = RacingServer()
    yield racing
    racing.close()


def client_for(server: RacingServer, **overrides: object) -> BFLClient:
    settings = Settings(
        bfl_api_key=KEY,
        bfl_base_url=f"http://127.0.0.1:{server.port}",
        **overrides,  # type: ignore[arg-type]
    )
    return BFLClient(settings)


def test_a_connection_idle_past_the_keepalive_is_not_reused_for_a_post(
    server: RacingServer,
) -> None:
    # Given the client's keep-alive below the server's idle timeout
    with client_for(server, http_keepalive_s=IDLE_CLOSE_S / 2) as client:
        client.submit_json("flux-dev", {"prompt": "a heron"})
        # When the next POST comes after the server's idle timeout
        time.sleep(IDLE_CLOSE_S + 0.1)
        submitted = client.submit_json("flux-dev", {"prompt": "a heron"})
    # Then it went on a new connection and was answered
    assert submitted.id == "t1"
    assert (server.connections, server.unanswered) == (2, 0)


def test_the_race_it_avoids_is_an_uncertain_job(server: RacingServer) -> None:
    # Given a keep-alive longer than the server's idle timeout (httpx's own default, 5 s)
    with client_for(server, http_keepalive_s=5.0) as client:
        client.submit_json("flux-dev", {"prompt": "a heron"})
        time.sleep(IDLE_CLOSE_S + 0.1)
        # Then a POST on the stale connection gets no answer: BFL may have made the task
        with pytest.raises(OutcomeUnknown, match="no answer after sending"):
            client.submit_json("flux-dev", {"prompt": "a heron"})
    assert (server.connections, server.unanswered) == (1, 1)


def test_the_default_keepalive_is_below_common_server_idle_timeouts() -> None:
    # gunicorn closes idle connections after 2 s; uvicorn, Node and Apache after 5 s
    assert 0 < Settings(bfl_api_key=KEY).http_keepalive_s < 2.0
