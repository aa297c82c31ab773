"""``fluxq api``: the HTTP API (``fluxq/api.py``) served by uvicorn until Ctrl-C or SIGTERM.

The socket is bound here, before uvicorn starts, so a port in use or an address that cannot be
bound is one line and exit 2 like every other command's failure, not uvicorn's log.
"""

from __future__ import annotations

import ipaddress
import signal
import socket

import redis
import typer

from fluxq.cli.common import (
    console,
    fail,
    redis_failure,
    settings_or_exit,
    with_redis_or_exit,
)

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(redis_failure(settings.redis_url, exc), cause=exc)
    finally:
        client.close()
    sock = _bind(host, port)
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    auth = "bearer token required" if settings.api_token else "no token: loopback only"
    console.print(f"fluxq api on http://{shown}:{port} ({auth}; Ctrl-C stops)", markup=False)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler it found:
    # this one makes that a clean exit 0 (as `fluxq metrics`), not a death by signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    app.command("api")(api)
