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


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
