"""The ``fluxq`` command line: the typer app (``fluxq.cli.typer_app``), loaded on first use.

``main`` first offers the arguments to ``fluxq.cli.fast_status``, which answers
``fluxq batch status NAME [--json]`` without loading typer, rich, pydantic or redis-py; anything
else (and that command whenever the fast path cannot answer it exactly) runs the typer app.
``from fluxq.cli import app`` still gives the typer app.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fluxq.cli import fast_status

if TYPE_CHECKING:
    import typer

    app: typer.Typer


def main() -> None:
    """Console-script entry point: a failure is one line and exit 2, never a traceback."""
    try:
        code = fast_status.run(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)
    if code is not None:
        sys.exit(code)
    from fluxq.cli.typer_app import main as typer_main  # lazy: typer and rich off the fast path

    typer_main()


def __getattr__(name: str) -> Any:
    """``fluxq.cli.app``: the typer app, imported on first use (PEP 562)."""
    if name != "app":
        raise AttributeError(f"module 'fluxq.cli' has no attribute {name!r}")
    from fluxq.cli.typer_app import app  # lazy: typer and rich load only when asked for

    globals()["app"] = app
    return app
