"""The Celery dispatcher: sends fluxq's tasks by name with Flower-readable args and no secrets.

The only positional argument is the job id; the batch is a kwarg so Flower can filter by it.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery, signature

from workers.celery_app import app as default_app
from workers.runtime import describe
from workers.store import Job


class CeleryDispatcher:
    """Sends fluxq.submit / poll / save / webhook and user callbacks through Celery."""

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or default_app

    def _send(self, name: str, job: Job, *, countdown_s: float = 0.0) -> None:
        argsrepr, kwargsrepr = describe(job)
        options: dict[str, Any] = {"argsrepr": argsrepr, "kwargsrepr": kwargsrepr}
        if countdown_s > 0:
            options["countdown"] = countdown_s
        self.app.send_task(name, args=[job.job_id], kwargs={"batch": job.batch}, **options)

    def submit(self, job: Job) -> None:
        self._send("fluxq.submit", job)

    def poll(self, job: Job, *, countdown_s: float) -> None:
        self._send("fluxq.poll", job, countdown_s=countdown_s)

    def save(self, job: Job, *, countdown_s: float = 0.0) -> None:
        self._send("fluxq.save", job, countdown_s=countdown_s)

    def webhook(self, job: Job) -> None:
        self._send("fluxq.webhook", job)

    def callback(self, job: Job, payload: dict[str, object]) -> None:
        """Run the user's Celery signature with the job's outcome as keyword arguments."""
        if not job.callback_json:
            return
        sig = signature(json.loads(job.callback_json), app=self.app)
        sig.apply_async(kwargs={"fluxq_job": payload})
