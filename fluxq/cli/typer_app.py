"""The ``fluxq`` typer app: one module per command group, each a thin shell over plain code.

Settings are built once per command (``common.settings_or_exit``) and passed down.
``fluxq.cli.main`` runs ``main`` here unless ``fluxq.cli.fast_status`` answered the command.
(Not named ``app.py``: a submodule ``fluxq.cli.app`` would shadow ``fluxq.cli.app``, the app.)
"""

from __future__ import annotations

import sys

import typer

from fluxq.cli import (
    api,
    batch,
    common,
    endpoints,
    flower,
    jobs,
    metrics,
    processes,
    redis_cmd,
    run,
    setup,
)

app = typer.Typer(
    name="fluxq",
    help="Run FLUX image generation through the BFL API at the account's active-task cap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback when a command fails."
    ),
) -> None:
    """fluxq: a Celery task queue for FLUX image generation through the BFL API."""
    if debug:
        common.Options.debug = True


setup.register(app)
endpoints.register(app)
processes.register(app)
flower.register(app)
jobs.register(app)
metrics.register(app)
batch.register(app)
redis_cmd.register(app)
run.register(app)
api.register(app)


def main() -> None:
    """Console-script entry point: a failure is one line and exit 2, never a traceback."""
    try:
        app(prog_name="fluxq")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if common.Options.debug:
            raise
        message = common.explain(exc)
        code = common.USER_ERROR_EXIT
        if message is None:  # a bug, not the user's doing
            reason = common.one_line(f"{type(exc).__name__}: {exc}")
            message = f"unexpected error: {reason} (`fluxq --debug …` shows why)"
            code = 1
        common.err_console.print(f"fluxq: {message}", markup=False, soft_wrap=True)
        sys.exit(code)
