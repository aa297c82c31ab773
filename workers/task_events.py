"""Flower's view of work that is not a Celery message: Celery's task events, sent by hand.

A poll is not a Celery task (``tasks.poll``: the poll queue), and a submit or a save run in the
process that saw its turn come is not one either (``tasks.inline_submit``, ``tasks.inline_save``).
Flower builds its task list from events, so these send the events a worker would: one task per
job and kind, with a task id derived from both (``task_id``). A job's polling, which lasts as
long as its generation, is received at its first poll and succeeded at its last; a submit or a
save, which take milliseconds, is one event when it ends (``ran``). Best effort: an event lost
never stops the work.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Celery

from fluxq.workers.runtime import describe
from fluxq.workers.state.jobs import Job

log = logging.getLogger("fluxq.events")


def task_id(name: str, job_id: str) -> str:
    """The Celery task id Flower shows for ``name``'s work on ``job_id`` (always the same)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}:{job_id}"))


class TaskEvents:
    """Sends Celery task events as the node ``hostname`` (what Flower lists as the worker)."""

    def __init__(self, app: Celery, *, hostname: str) -> None:
        self._dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname=hostname)
        self._lock = threading.Lock()

    def _send(self, event: str, task: str, job_id: str, **fields: Any) -> None:
        try:
            with self._lock:
                self._dispatcher.send(event, uuid=task_id(task, job_id), **fields)
        except Exception as exc:  # the broker's errors vary by transport: never fail the work
            log.info("Flower event %s of %s for job=%s not sent: %s", event, task, job_id, exc)

    def started(self, name: str, job: Job) -> None:
        """The task ``name`` of ``job`` is received, with fluxq's Flower text. (No separate
        "started" event: each event is a publish, about 1 ms of a worker's CPU, and Flower shows
        the task from this one and its end.)"""
        argsrepr, kwargsrepr = describe(job)
        self._send(
            "task-received", name, job.job_id, name=name, args=argsrepr, kwargs=kwargsrepr,
            retries=0, eta=None, expires=None, root_id=None, parent_id=None,
        )  # fmt: skip

    def succeeded(self, name: str, job: Job, *, result: str, runtime_s: float) -> None:
        self._send("task-succeeded", name, job.job_id, result=result, runtime=runtime_s)

    def ran(self, name: str, job: Job, *, result: str, runtime_s: float, received_s: float) -> None:
        """The task ``name`` of ``job`` ran and ended, in one event: for work that takes
        milliseconds (a submit, a save), a separate "received" would be one more publish per
        job for a state Flower would show for no longer than that. Celery's event state takes
        the received event's fields (name, args, its time) from this one too."""
        argsrepr, kwargsrepr = describe(job)
        self._send(
            "task-succeeded", name, job.job_id, name=name, args=argsrepr, kwargs=kwargsrepr,
            retries=0, received=received_s, result=result, runtime=runtime_s,
        )  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._dispatcher.close()
