"""``fluxq metrics``: Prometheus metrics for deployments without the HTTP API.

Gathered from Redis at each scrape (``workers/metrics.py``); workers stay as they are.

Loopback only unless a token is set, as ``fluxq api``: on any other address every request must
carry ``Authorization: Bearer <FLUXQ_API_TOKEN>`` (Prometheus sends it with ``authorization:``
in its scrape config), and with no token set such an address is refused before anything binds.
"""

from __future__ import annotations

import hmac
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import typer

from fluxq.cli.api import is_loopback
from fluxq.cli.common import console, fail, settings_or_exit, store_or_exit

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def refusal(host: str, token_set: bool) -> str | None:
    """Why ``fluxq metrics`` must not serve ``host``: a non-loopback address with no token."""
    if token_set or is_loopback(host):
        return None
    return (
        f"metrics: refusing to serve {host} without a token: anyone who reaches it could read "
        "your queue and make each scrape read Redis. Set FLUXQ_API_TOKEN (Prometheus sends it "
        "as a bearer token), or listen on 127.0.0.1."
    )


def bearer_guard(app: WsgiApp, token: str) -> WsgiApp:
    """``app`` behind ``Authorization: Bearer <token>``: anything else is a 401, compared in
    constant time."""
    expected = token.encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", "Bearer"), ("Content-Type", "text/plain; charset=utf-8")],
        )
        return [b"a valid bearer token is required\n"]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a scrape every 15 s is not news."""


def _serve(host: str, port: int, app: WsgiApp) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``app`` on ``host:port`` in a daemon thread (as prometheus_client's own server)."""
    # lazy: prometheus-client loads only for this command
    from prometheus_client.exposition import ThreadingWSGIServer

    family, _, _, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(address[0]), port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def metrics(
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (0.0.0.0: every interface; needs a token)."
    ),
    port: int = typer.Option(9108, help="Port to listen on."),
    once: bool = typer.Option(False, "--once", help="Print one scrape to stdout and exit."),
) -> None:
    """Serve fluxq's Prometheus metrics at http://HOST:PORT/metrics until Ctrl-C or SIGTERM.

    On an address other than loopback, FLUXQ_API_TOKEN must be set and every scrape must send
    it as a bearer token."""
    # lazy: prometheus-client and the collector load only for this command
    from prometheus_client import generate_latest, make_wsgi_app

    from fluxq.workers.metrics import registry_for  # lazy: see above

    settings = settings_or_exit()
    token = settings.api_token
    if not once and (why := refusal(host, token is not None)) is not None:
        fail(why)
    store = store_or_exit(settings)
    registry = registry_for(settings, store.redis)
    if once:
        typer.echo(generate_latest(registry).decode(), nl=False)
        return
    app: WsgiApp = make_wsgi_app(registry)
    guarded = token is not None and not is_loopback(host)
    if guarded:
        assert token is not None
        app = bearer_guard(app, token.get_secret_value())
    try:
        server, thread = _serve(host, port, app)
    except OSError as exc:
        fail(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}", cause=exc)
    auth = "bearer token required" if guarded else "no token: loopback only"
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    console.print(
        f"fluxq metrics on http://{shown}:{port}/metrics ({auth}; Ctrl-C stops)", markup=False
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
