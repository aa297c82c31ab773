"""``fluxq flower``: Flower on fluxq's broker, set up to be read.

The task list shows each task's args and kwargs (``job=… endpoint=… "prompt…"`` and
``batch=…``), so Flower's search filters by batch; it keeps a bounded number of tasks
(FLUXQ_FLOWER_MAX_TASKS) and forgets them on exit unless ``--persistent``. Beyond loopback it
needs HTTP basic auth (FLUXQ_FLOWER_USER, FLUXQ_FLOWER_PASSWORD), which is handed to Flower's
options object in this process: never on a command line (``ps``) nor in a task argument.
Flower runs read-only: it watches; cancelling is fluxq's (``fluxq cancel``, ``fluxq batch cancel``).
Flower has no ``Host`` check of its own (a page whose name is made to resolve to 127.0.0.1 could
read every prompt): ``guard_hosts`` adds one, answering 400 to a name not allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from fluxq.cli.api import AllowedHosts, is_loopback
from fluxq.cli.common import console, fail, settings_or_exit, with_redis_or_exit
from fluxq.config.settings import Settings

TASKS_COLUMNS = "name,uuid,state,args,kwargs,received,started,runtime,worker"
"""Flower's ``tasks_columns``: its default plus args and kwargs, where fluxq's text is."""

DEFAULT_DB = Path("flower-state")
"""Where ``--persistent`` keeps Flower's state without ``--db`` (dbm may add a suffix)."""

STATE_SAVE_INTERVAL_MS = 60_000
"""With ``--persistent``, Flower also saves its state this often, not only at exit."""

FLOWER_ENV_AUTH = "FLOWER_BASIC_AUTH"
"""Flower's own variable for basic auth: it would override fluxq's, so it is refused."""


def flower_argv(settings: Settings, *, address: str, port: int, db: Path | None) -> list[str]:
    """Flower's command line: nothing secret, every option fluxq relies on set explicitly.

    ``--conf``: never run a flowerconfig.py that happens to sit in the working directory.
    ``--persistent`` is given either way, so a FLOWER_PERSISTENT variable cannot turn it on.
    ``--read_only``: Flower watches; revoking a task or sending one by hand from it would go round
    fluxq's job records and slots (``fluxq cancel`` and ``fluxq batch cancel`` stop work).
    """
    argv = [
        "flower",
        f"--address={address}",
        f"--port={port}",
        f"--conf={os.devnull}",
        f"--tasks_columns={TASKS_COLUMNS}",
        f"--max_tasks={settings.flower_max_tasks}",
        f"--persistent={db is not None}",
        "--read_only=True",
    ]
    if db is not None:
        argv += [f"--db={db}", f"--state_save_interval={STATE_SAVE_INTERVAL_MS}"]
    return argv


WRONG_HOST = "this Host is not a name of this server (FLUXQ_FLOWER_ALLOWED_HOSTS)\n"
"""The body of the 400 a request with a Host not allowed gets."""


def guard_hosts(allowed: AllowedHosts) -> None:
    """Make Flower answer 400 to a ``Host`` that ``allowed`` refuses, before any of its handlers.

    Flower has no such option, and Tornado routes every host name to its handlers: this wraps
    ``Flower.find_handler`` (Tornado's routing step) in this process only."""
    import tornado.web
    from flower.app import Flower

    class WrongHost(tornado.web.RequestHandler):
        def prepare(self) -> None:
            self.set_status(400)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(WRONG_HOST)

    routed = Flower.find_handler

    def find_handler(app: Any, request: Any, **kwargs: Any) -> Any:
        if not allowed.allows(request.headers.get("Host")):
            return app.get_handler_delegate(request, WrongHost)
        return routed(app, request, **kwargs)

    Flower.find_handler = find_handler


def basic_auth(settings: Settings) -> str | None:
    """``user:password`` for Flower's basic auth, None when neither is set; exits 2 when only
    one is, or the user name cannot be sent (a colon ends it in HTTP basic auth)."""
    user, password = settings.flower_user, settings.flower_password
    if user is None and password is None:
        return None
    if not user or password is None or not password.get_secret_value():
        fail(
            "flower: set both FLUXQ_FLOWER_USER and FLUXQ_FLOWER_PASSWORD (basic auth), "
            "or neither (then Flower listens on loopback only)."
        )
    if ":" in user or any(c.isspace() or not c.isprintable() or ord(c) > 0x7E for c in user):
        fail("flower: FLUXQ_FLOWER_USER must be printable ASCII without spaces or a colon.")
    return f"{user}:{password.get_secret_value()}"


def flower(
    port: int = typer.Option(5555, min=1, max=65535, help="Flower's port."),
    address: str = typer.Option(
        "127.0.0.1", help="Flower's address (beyond loopback it needs FLUXQ_FLOWER_USER/PASSWORD)."
    ),
    persistent: bool = typer.Option(
        False, "--persistent", help="Keep Flower's task list across restarts, in --db."
    ),
    db: Path | None = typer.Option(
        None,
        help=f"Flower's state file with --persistent (default: ./{DEFAULT_DB}).",
        dir_okay=False,
    ),
) -> None:
    """Run Flower on fluxq's broker (FLUXQ_REDIS_URL): tasks by job and batch, args shown."""
    settings = settings_or_exit()
    if FLOWER_ENV_AUTH in os.environ:
        fail(
            f"flower: {FLOWER_ENV_AUTH} is set; fluxq flower takes its basic auth from "
            "FLUXQ_FLOWER_USER and FLUXQ_FLOWER_PASSWORD: move it there and unset it."
        )
    credentials = basic_auth(settings)
    if credentials is None and not is_loopback(address):
        fail(
            f"flower: refusing to serve {address or 'every address'} without basic auth: anyone "
            "who reaches it could read every prompt. Set FLUXQ_FLOWER_USER and "
            "FLUXQ_FLOWER_PASSWORD, or listen on 127.0.0.1."
        )
    if db is not None and not persistent:
        fail("flower: --db is Flower's state file with --persistent: add --persistent.")
    state = (db or DEFAULT_DB) if persistent else None
    if state is not None and not state.absolute().parent.is_dir():
        fail(f"flower: cannot keep state in {state}: its directory does not exist.")

    settings = with_redis_or_exit(settings)  # FLUXQ_REDIS_URL, else the embedded Redis
    from flower.options import default_options  # lazy: Flower loads only for this command

    from fluxq.workers.celery_app import make_celery  # lazy: Celery loads only for this command

    if credentials is not None:
        # Flower's options object, in this process: the password reaches no argv and no log.
        default_options.basic_auth = [credentials]
    hosts = AllowedHosts.build(address, settings.flower_allowed_hosts)
    guard_hosts(hosts)
    shown = f"[{address}]" if ":" in address else (address or "*")
    auth = "basic auth required" if credentials else "no auth: loopback only"
    kept = f"state in {state}" if state is not None else "state in memory only"
    console.print(
        f"fluxq flower on http://{shown}:{port} ({auth}; {kept}; Host: {hosts.shown()}; "
        "Ctrl-C stops)",
        markup=False,
        soft_wrap=True,
    )
    # In this process, not a child: SIGTERM to `fluxq flower` stops Flower itself.
    argv = flower_argv(settings, address=address, port=port, db=state)
    code = make_celery(settings).start(argv)
    raise typer.Exit(code=code or 0)


def register(app: typer.Typer) -> None:
    app.command("flower")(flower)
