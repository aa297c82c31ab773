"""``fluxq metrics``: Prometheus metrics for deployments without the HTTP API.

Gathered from Redis at each scrape (``workers/metrics.py``); workers stay as they are.
"""

from __future__ import annotations

import signal
import threading

import typer

from fluxq.cli.common import console, fail, settings_or_exit, store_or_exit


def metrics(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(9108, help="Port to listen on."),
    once: bool = typer.Option(False, "--once", help="Print one scrape to stdout and exit."),
) -> None:
    """Serve fluxq's Prometheus metrics at http://HOST:PORT/metrics until Ctrl-C or SIGTERM."""
    # lazy: prometheus-client and the collector load only for this command
    from prometheus_client import generate_latest, start_http_server

    from workers.metrics import registry_for  # lazy: see above

    settings = settings_or_exit()
    store = store_or_exit(settings)
    registry = registry_for(settings, store.redis)
    if once:
        typer.echo(generate_latest(registry).decode(), nl=False)
        return
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        fail(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}", cause=exc)
    console.print(f"fluxq metrics on http://{host}:{port}/metrics (Ctrl-C stops)", markup=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        thread.join(timeout=5)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
