"""``fluxq api``: the HTTP API (``fluxq/api.py``) served by uvicorn until Ctrl-C or SIGTERM.

The socket is bound here, before uvicorn starts, so a port in use or an address that cannot be
bound is one line and exit 2 like every other command's failure, not uvicorn's log.
"""

from __future__ import annotations

import gc
import ipaddress
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
import typer

from fluxq.cli.common import (
    console,
    fail,
    redis_failure,
    settings_or_exit,
    with_redis_or_exit,
)
from fluxq.workers.state.redis_client import connect

LOOPBACK_NAMES = ("localhost",)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host headers always answered (with any port): a DNS rebinding attack never sends these, it
sends the attacker's own name."""

WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")  # noqa: S104 - names them, binds nothing
"""Addresses meaning "every interface": any name may then reach the server."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header, lower case, without its port (IPv6 in brackets, as it is
    written there); None when the header is not ``host[:port]``."""
    value = header.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return name or None


@dataclass(frozen=True)
class AllowedHosts:
    """The ``Host`` headers a server answers: DNS rebinding (a page whose name is made to
    resolve to 127.0.0.1) sends its own name, so a name not listed is refused."""

    names: frozenset[str]
    """Exact names, lower case, IPv6 in brackets."""
    suffixes: tuple[str, ...] = ()
    """``.example.com`` for each ``*.example.com`` entry."""
    any_host: bool = False

    @classmethod
    def build(cls, bind: str | None, extra: Sequence[str], *also: str | None) -> AllowedHosts:
        """The loopback names, the address bound (every name when it is a wildcard: only allowed
        with credentials), ``extra`` (a setting) and the hosts of the URLs ``also``."""
        names = set(LOOPBACK_HOSTS)
        suffixes = []
        any_host = bind is not None and bind.strip().lower() in WILDCARD_BINDS
        if bind and not any_host:
            names.add(f"[{bind.strip('[]')}]" if ":" in bind else bind.lower())
        for url in also:
            host = urlsplit(url).hostname if url else None
            if host:
                names.add(f"[{host}]" if ":" in host else host)
        for entry in extra:
            if entry == "*":
                any_host = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), any_host)

    def allows(self, header: str | None) -> bool:
        if self.any_host:
            return True
        name = host_name(header or "")
        if name is None:
            return False
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def shown(self) -> str:
        """The list, for a start-up line or a refusal."""
        if self.any_host:
            return "any host"
        return ", ".join([*sorted(self.names), *(f"*{s}" for s in self.suffixes)])


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on a connection whose socket
    # says so. Without it every keep-alive response (headers, then body: two writes) waited
    # for the client's delayed ACK, 40 ms each on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        fail(f"api: cannot listen on {host}:{port}: {exc.strerror or exc}", cause=exc)
    return sock


def api(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 needs a token)."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Serve the HTTP API (jobs, batches, metrics) at http://HOST:PORT until Ctrl-C or SIGTERM."""
    import uvicorn  # lazy: the server and the app load only for this command

    from fluxq.api import create_app  # lazy: see above

    settings = settings_or_exit()
    if settings.api_token is None and not is_loopback(host):
        fail(
            f"api: refusing to serve {host} without a token: anyone who reaches it could spend "
            "your credits. Set FLUXQ_API_TOKEN, or listen on 127.0.0.1."
        )
    settings = with_redis_or_exit(settings)  # FLUXQ_REDIS_URL, else the embedded Redis
    assert settings.redis_url is not None
    client = connect(settings.redis_url, sentinel_master=settings.redis_sentinel_master)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(redis_failure(settings.redis_url, exc), cause=exc)
    finally:
        client.close()
    sock = bind_listener(host, port)
    hosts = AllowedHosts.build(host, settings.api_allowed_hosts, settings.bfl_webhook_base_url)
    app = create_app(settings, hosts=hosts)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            # What the app loaded and built at start-up (about 100,000 objects) lives as long as
            # the process; a full collection walked it all, each one a stall of the event loop
            # (50 ms idle, 100 to 180 ms during a burst of requests). Frozen, it walks only what
            # requests made since (about 10 ms).
            gc.collect()
            gc.freeze()

    server = Server(config)
    shown = f"[{host}]" if ":" in host else host
    auth = "bearer token required" if settings.api_token else "no token: loopback only"
    console.print(
        f"fluxq api on http://{shown}:{port} ({auth}; Host: {hosts.shown()}; Ctrl-C stops)",
        markup=False,
        soft_wrap=True,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler it found:
    # this one makes that a clean exit 0 (as `fluxq metrics`), not a death by signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    app.command("api")(api)
