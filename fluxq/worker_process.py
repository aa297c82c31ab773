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

from celery import Celery, signals

from fluxq.config.celery import POLL, SAVE, TASK_MODULES
from fluxq.config.settings import load_settings
from fluxq.tasks.inline_save import THREADS as SAVE_THREADS
from fluxq.tasks.inline_save import InlineSaves, SaveConsumer
from fluxq.tasks.inline_submit import WORKER_COUNTER, InlineSubmits
from fluxq.tasks.poll import Poller
from fluxq.tasks.sweep import SweepTimer
from fluxq.workers.celery_app import make_celery
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.save_queue import SaveQueue
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


class ProcessThreads:
    """The threads a worker process runs beside Celery's pool, by the queues it serves: the sweep
    timer always; for the poll queue, the poller and in-process submits; for the save queue,
    in-process saves and the save queue's consumer."""

    def __init__(self, app: Celery, rt: Runtime, *, name: str, queues: list[str], threads: int):
        self.timer = SweepTimer(rt)
        self.poller: Poller | None = None
        self.inline: InlineSubmits | None = None
        self.saves: InlineSaves | None = None
        self.consumer: SaveConsumer | None = None
        self.events: TaskEvents | None = None
        if POLL.queue in queues or SAVE.queue in queues:
            self.events = TaskEvents(app, hostname=node_name(name))
        if POLL.queue in queues:
            # The key's due jobs are polled on threads of this process's own, and the slot a
            # Ready frees is refilled here, with no Celery hop.
            self.poller = Poller(rt, threads=threads, events=self.events)
            self.inline = InlineSubmits.install(rt, counter=WORKER_COUNTER, events=self.events)
        if SAVE.queue in queues:
            # The saves this process's poller sees Ready run here, and so do those others put in
            # the key's save queue (fluxq api's webhooks, other processes' overflow).
            save_threads = SAVE_THREADS if POLL.queue in queues else threads
            self.saves = InlineSaves.install(rt, threads=save_threads, events=self.events)
            self.consumer = SaveConsumer(rt, self.saves, SaveQueue(rt.redis, rt.label))

    def start(self, **_: Any) -> None:
        self.timer.start()
        for each in (self.poller, self.consumer):
            if each is not None:
                each.start()

    def stop(self, **_: Any) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self.inline is not None:
            self.inline.close()  # the POSTs in flight are answered and recorded first
        if self.consumer is not None:
            self.consumer.stop()
        if self.saves is not None:
            self.saves.close()  # and the downloads under way end
        if self.events is not None:
            self.events.close()
        self.timer.stop()


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
    threads = ProcessThreads(
        app, rt, name=args.name, queues=args.queues.split(","), threads=args.threads
    )
    signals.worker_ready.connect(threads.start, weak=False)
    signals.worker_shutdown.connect(threads.stop, weak=False)

    app.worker_main(worker_argv(args.name, args.queues, args.threads, args.loglevel))


if __name__ == "__main__":
    main()
