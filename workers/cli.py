"""The ``fluxq`` command line: one Settings object built here and passed down to every command.

Each command is a thin shell over a plain function that tests can call without a terminal.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from config.errors import ConfigError
from config.settings import Settings, load_settings

app = typer.Typer(
    name="fluxq",
    help="Run FLUX image generation through the BFL API at the account's active-task cap.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def root() -> None:
    """fluxq: a Celery task queue for FLUX image generation through the BFL API."""


def settings_or_exit() -> Settings:
    """Load settings or print every bad variable and exit 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        err_console.print(f"[bold red]fluxq:[/] {exc}")
        raise typer.Exit(code=2) from None


@app.command("config")
def show_config() -> None:
    """Print the effective settings (from the environment and .env), secrets masked."""
    settings = settings_or_exit()
    table = Table("setting", "environment variable", "value", title="fluxq settings")
    for name, value in settings.masked().items():
        env = "BFL_API_KEY" if name == "bfl_api_key" else f"FLUXQ_{name.upper()}"
        table.add_row(name, env, value)
    console.print(table)


@app.command("simulator")
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
) -> None:
    """Run the local BFL API simulator and print the settings that point fluxq at it."""
    from pydantic import ValidationError

    from simulator import SimConfig, parse_faults, parse_latency, serve

    try:
        config = SimConfig(
            latency=parse_latency(latency) if latency else {},
            initial_credits=credits,
            time_scale=time_scale,
            retry_after_s=retry_after_s,
            **parse_faults(faults),
        )
    except (ValueError, ValidationError) as exc:
        err_console.print(f"[bold red]fluxq simulator:[/] {exc}")
        raise typer.Exit(code=2) from None
    serve(config, host=host, port=port)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
