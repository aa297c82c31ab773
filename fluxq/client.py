"""The Python front door: a ``Client`` on fluxq's Redis, and a handle for each job it enqueues.

``fluxq.enqueue(...)`` uses one process-wide client built from the environment on first use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from config.settings import Settings, load_settings
from tasks.enqueue import enqueue as enqueue_job
from workers.dispatch import celery_runtime
from workers.runtime import Runtime
from workers.state.jobs import Job, State

WAIT_STEP_S = 0.2
"""How often ``JobHandle.wait`` reads the job's state."""


class JobHandle:
    """One job by id: its state now, or wait for it to end."""

    def __init__(self, client: Client, job_id: str) -> None:
        self._client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def info(self) -> Job | None:
        """The job's record, or None once it expired (or never existed)."""
        return self._client.runtime.store.get(self.id)

    def state(self) -> State | None:
        job = self.info()
        return None if job is None else job.state

    def wait(self, *, timeout_s: float = 1200.0) -> Job:
        """Block until the job is done, failed or cancelled; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.info()
            if job is not None and job.state.terminal:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} did not end within {timeout_s:.0f} s")
            time.sleep(WAIT_STEP_S)

    @property
    def path(self) -> Path | None:
        """The saved image, once the job is done."""
        job = self.info()
        return Path(job.path) if job is not None and job.path else None


class Client:
    """A connection to fluxq's Redis for producers; close it (or use ``with``) when done."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.runtime: Runtime = celery_runtime(self.settings)

    def enqueue(self, endpoint: str, request: Mapping[str, Any], **options: Any) -> JobHandle:
        """Validate and enqueue one job; see ``fluxq.enqueue`` for the options."""
        return JobHandle(self, enqueue_job(self.runtime, endpoint, request, **options))

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, job_id)

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client, built from the environment (and ``.env``) on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def enqueue(endpoint: str, request: Mapping[str, Any], **options: Any) -> JobHandle:
    """Validate and enqueue one job; returns its handle.

    Options: ``job_id`` (re-enqueueing an id is a no-op), ``batch``, ``name``, ``priority`` (0..9,
    higher first), ``callback`` (a Celery signature run with ``fluxq_job=<outcome>``) and
    ``webhook_url``. Raises ``config.errors.InvalidRequest`` naming every bad field, before any
    credit is spent. Settings come from the environment (``FLUXQ_REDIS_URL`` must be set).
    """
    return default_client().enqueue(endpoint, request, **options)
