"""``fluxq config`` and ``fluxq simulator``: what fluxq will use, and a local BFL to point it at."""

from __future__ import annotations

import errno

import typer
from pydantic import ValidationError
from rich.table import Table

from fluxq.cli.common import console, fail, settings_or_exit


def show_config() -> None:
    """Print the effective settings (from the environment and .env), secrets masked."""
    settings = settings_or_exit()
    table = Table("setting", "environment variable", "value", title="fluxq settings")
    for name, value in settings.masked().items():
        env = "BFL_API_KEY" if name == "bfl_api_key" else f"FLUXQ_{name.upper()}"
        table.add_row(name, env, value)
    console.print(table)


def simulator_command(
    host: str = typer.Option("127.0.0.1", help="Loopback address of the API listener."),
    port: int = typer.Option(8080, help="API port; polling and delivery take port+1, port+2."),
    latency: str = typer.Option(
        "", help="Per-endpoint latency, e.g. 'flux-pro-1.1=lognormal:4:9,default=fixed:1'."
    ),
    faults: str = typer.Option(
        "", help="Fault rates, e.g. 'submit_503=0.05,drop=0.01,lost=0.001'."
    ),
    credits: float = typer.Option(1_000_000.0, help="Starting credits of each account."),
    time_scale: float = typer.Option(1.0, help="Multiplies model durations (0.01: 4 s → 40 ms)."),
    retry_after_s: int | None = typer.Option(None, help="Send Retry-After on 429s."),
    webhook_auth: str = typer.Option(
        "secret",
        help="How webhooks prove their sender: 'secret' (X-Webhook-Secret, BFL's SDK) or 'hmac' "
        "(X-BFL-Signature over the body).",
    ),
) -> None:
    """Run the local BFL API simulator and print the settings that point fluxq at it."""
    from fluxq.simulator import (  # lazy: uvicorn, starlette
        SimConfig,
        parse_faults,
        parse_latency,
        serve,
    )

    try:
        config = SimConfig(
            latency=parse_latency(latency) if latency else {},
            initial_credits=credits,
            time_scale=time_scale,
            retry_after_s=retry_after_s,
            webhook_auth=webhook_auth,
            **parse_faults(faults),
        )
    except (ValueError, ValidationError) as exc:
        fail(f"simulator: {exc}", cause=exc)
    try:
        serve(config, host=host, port=port)
    except ValueError as exc:  # a host that is not loopback
        fail(f"simulator: {exc}", cause=exc)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"simulator: port {port} (or {port + 1}, {port + 2}: polling and delivery) is "
                "already in use on loopback: stop what holds it, or pick another --port "
                "(--port 0 takes free ports)",
                cause=exc,
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            fail(f"simulator: cannot listen on {host} ({exc.strerror}): use 127.0.0.1", cause=exc)
        raise


def register(app: typer.Typer) -> None:
    app.command("config")(show_config)
    app.command("simulator")(simulator_command)
