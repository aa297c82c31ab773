"""One Celery worker process of ``fluxq worker``: settings, app and Runtime built here, once.

Started by the supervisor as ``python -P -m fluxq.worker_process --name … --queues … --threads …``
(``-P``: the user's working directory never shadows fluxq's packages).
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
from typing import Any

from celery import signals

from fluxq.config.celery import POLL, SAVE, TASK_MODULES
from fluxq.config.settings import load_settings
from fluxq.tasks.inline_save import InlineSaves
from fluxq.tasks.inline_submit import WORKER_COUNTER, InlineSubmits
from fluxq.tasks.poll import Poller
from fluxq.tasks.sweep import SweepTimer
from fluxq.workers.celery_app import make_celery
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.task_events import TaskEvents

LOADED_TASK_MODULES = tuple(importlib.import_module(name) for name in TASK_MODULES)
"""Imported here, before Celery's loader imports them by name with the working directory on
``sys.path``: they are then already loaded from fluxq, never from the user's directory."""


def node_name(name: str) -> str:
    """The Celery node name of one fluxq worker process (what Flower lists)."""
    return f"{name}-{os.getppid()}@{socket.gethostname()}"


def worker_argv(name: str, queues: str, threads: int, loglevel: str) -> list[str]:
    """The ``celery worker`` arguments for one fluxq worker process."""
    return [
        "worker", "--pool", "threads", "--concurrency", str(threads),
        "--queues", queues, "--hostname", node_name(name), "--loglevel", loglevel, "--events",
        # Gossip and mingle talk to every other worker at start-up; fluxq needs neither.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fluxq.worker_process")
    parser.add_argument("--name", required=True)
    parser.add_argument("--queues", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)

    settings = load_settings()
    app = make_celery(settings)
    rt = celery_runtime(settings, app=app)
    timer = SweepTimer(rt)
    # The process that serves the poll queue polls the key's due jobs on threads of its own.
    poller = None
    inline: InlineSubmits | None = None
    saves: InlineSaves | None = None
    events: TaskEvents | None = None
    queues = args.queues.split(",")
    if POLL.queue in queues:
        events = TaskEvents(app, hostname=node_name(args.name))
        poller = Poller(rt, threads=args.threads, events=events)
        # The slot a Ready frees is refilled by this process, with no Celery hop.
        inline = InlineSubmits.install(rt, counter=WORKER_COUNTER, events=events)
        if SAVE.queue in queues:  # and the image it saw Ready is saved here too
            saves = InlineSaves.install(rt, events=events)

    def start_threads(**_: Any) -> None:
        timer.start()
        if poller is not None:
            poller.start()

    def stop_threads(**_: Any) -> None:
        if poller is not None:
            poller.stop()
        if inline is not None:
            inline.close()  # the POSTs in flight are answered and recorded first
        if saves is not None:
            saves.close()  # and the downloads under way end
        if events is not None:
            events.close()
        timer.stop()

    signals.worker_ready.connect(start_threads, weak=False)
    signals.worker_shutdown.connect(stop_threads, weak=False)

    app.worker_main(worker_argv(args.name, args.queues, args.threads, args.loglevel))


if __name__ == "__main__":
    main()
