"""Loopback sockets for the simulator's listeners: binding, host aliases, and quiet fault logs.

Only IPv4 loopback is ever bound; 127.0.0.2/3 stand in for BFL's other cluster and delivery hosts.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from contextlib import suppress

POLLING_HOST_ALIAS = "127.0.0.2"
"""Preferred polling host: another loopback address, so the polling URL differs in host too."""

DELIVERY_HOST_ALIAS = "127.0.0.3"
"""Preferred delivery host, as BFL's ``delivery-*.bfl.ai`` differs from ``api.bfl.ai``."""

DROPPED_ON_PURPOSE = "ASGI callable returned without completing response."
"""What uvicorn logs as an error when a DroppedResponse fault closes a connection on purpose."""


class _InjectedDropFilter(logging.Filter):
    """Demotes uvicorn's error about an incomplete response to INFO: the drop fault made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == DROPPED_ON_PURPOSE:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "injected fault: connection dropped mid-response", None
        return True


_DROP_FILTER = _InjectedDropFilter()


def quiet_injected_drops() -> None:
    """Install the filter on uvicorn's error logger, once per process."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _DROP_FILTER not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_DROP_FILTER)


def check_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback address (or localhost); raise ValueError otherwise."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host {host!r} is not an IP address; the simulator binds loopback only"
        ) from None
    if address.version != 4 or not address.is_loopback:
        raise ValueError(f"host {host!r} is not IPv4 loopback; the simulator binds 127.x.x.x only")
    return host


def bind_loopback(host: str, port: int) -> socket.socket:
    """A listening TCP socket on loopback ``host``:``port`` (0: a free port)."""
    host = check_loopback(host)
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets saying so, and without
    # it every response waits ~40 ms on Nagle's algorithm and the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def bind_alias(alias: str, host: str, port: int) -> socket.socket:
    # 127.0.0.2/3 are loopback on Linux; elsewhere (macOS) fall back to another port on host.
    if host == "127.0.0.1":
        with suppress(OSError):
            return bind_loopback(alias, port)
    return bind_loopback(host, port)


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"
