"""The Celery dispatcher: sends fluxq's tasks by name with Flower-readable args and no secrets.

The only positional argument is the job id; the batch is a kwarg so Flower can filter by it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Celery, signature

from fluxq.config.celery import NOTIFY, SAVE, SUBMIT, TaskSpec
from fluxq.config.errors import ConfigError
from fluxq.config.settings import Settings
from fluxq.workers.celery_app import make_celery
from fluxq.workers.runtime import Runtime, build_runtime, describe
from fluxq.workers.state.jobs import Job
from fluxq.workers.state.poll_queue import PollQueue
from fluxq.workers.state.save_queue import SaveQueue

RUNTIME_ATTRIBUTE = "fluxq_runtime"
"""The attribute of a worker's Celery app that holds its Runtime (set once at start-up)."""


class CeleryDispatcher:
    """Sends fluxq.submit, user notifications, user callbacks and delayed saves through Celery; a
    poll goes into the key's poll queue (``fluxq:polls:{k}``), where the workers' pollers find
    it, and a save due now into the key's save queue."""

    def __init__(
        self, app: Celery, polls: PollQueue | None = None, saves: SaveQueue | None = None
    ) -> None:
        self.app = app
        self.polls = polls
        self.saves = saves

    def _send(self, task: TaskSpec, job: Job, *, countdown_s: float = 0.0) -> None:
        argsrepr, kwargsrepr = describe(job)
        options: dict[str, Any] = {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}
        if countdown_s > 0:
            options["countdown"] = countdown_s
        self.app.send_task(task.name, args=[job.job_id], kwargs={"batch": job.batch}, **options)

    def submit(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self._send(SUBMIT, job, countdown_s=countdown_s)

    def poll(self, job: Job, *, countdown_s: float) -> None:
        """Poll the job in ``countdown_s``: into the key's poll queue, not a Celery message."""
        if self.polls is None:
            raise ConfigError("this dispatcher has no poll queue: build it with celery_runtime")
        self.polls.add(job.job_id, due_s=time.time() + max(0.0, countdown_s))

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        """A save due now goes into the key's save queue (``fluxq:savequeue:{k}``), where the
        processes serving fluxq.save take it; one that must wait is a Celery task with its
        countdown."""
        if countdown_s > 0 or self.saves is None:
            self._send(SAVE, job, countdown_s=countdown_s)
        else:
            self.saves.push(job.job_id)

    def notify(self, job: Job) -> None:
        self._send(NOTIFY, job)

    def callback(self, job: Job, payload: dict[str, object]) -> None:
        """Run the user's Celery signature with the job's outcome as keyword arguments."""
        if not job.callback_json:
            return
        sig = signature(json.loads(job.callback_json), app=self.app)
        sig.apply_async(kwargs={"fluxq_job": payload})


def celery_runtime(settings: Settings, *, app: Celery | None = None) -> Runtime:
    """A Runtime that dispatches through Celery on ``settings.redis_url``: workers and producers.

    The Runtime is attached to the app, so a task finds it from ``self.app`` (``runtime_of``).
    """
    celery = app if app is not None else make_celery(settings)
    assert settings.redis_url is not None  # make_celery refused an unset URL
    dispatcher = CeleryDispatcher(celery)
    rt = build_runtime(settings, redis_url=settings.redis_url, dispatch=dispatcher)
    dispatcher.polls = rt.polls
    dispatcher.saves = SaveQueue(rt.redis, rt.label)
    setattr(celery, RUNTIME_ATTRIBUTE, rt)
    return rt


def runtime_of(app: Celery) -> Runtime:
    """The Runtime a worker process attached to its Celery app at start-up."""
    rt = getattr(app, RUNTIME_ATTRIBUTE, None)
    if not isinstance(rt, Runtime):
        raise ConfigError("this Celery app has no fluxq runtime: start workers with `fluxq worker`")
    return rt
