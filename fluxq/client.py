"""The Python front door: a ``Client`` on fluxq's Redis, and a handle for each job it enqueues.

``fluxq.enqueue(...)`` uses one process-wide client built from the environment on first use.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fluxq.batch_submit import BadLines, NoLines, batch_problems, submit_file
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.settings import Settings, load_settings
from fluxq.tasks.batches import EnqueueResult
from fluxq.tasks.enqueue import enqueue as enqueue_job
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.process.embedded_redis import shared_redis
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.batches import DEFAULT_BATCH_PRIORITY
from fluxq.workers.state.jobs import Job, State

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
        """The saved image on this machine's disk, once the job is done (None when it went to an
        object store: see ``location``)."""
        where = self.location
        return None if where is None or "://" in where else Path(where)

    @property
    def location(self) -> str | None:
        """Where the image was saved: a local path, or an object-store URL (``s3://…``)."""
        job = self.info()
        return job.path if job is not None and job.path else None


class Client:
    """A connection to fluxq's Redis for producers; close it (or use ``with``) when done."""

    def __init__(self, settings: Settings | None = None) -> None:
        """On ``settings.redis_url``; unset, on the embedded Redis the ``fluxq`` commands share
        (that of FLUXQ_DATA_DIR), started when none runs (ConfigError when it cannot start)."""
        chosen = settings if settings is not None else load_settings()
        if not chosen.redis_url:
            chosen = chosen.with_overrides(redis_url=shared_redis(chosen))
        self.settings = chosen
        self.runtime: Runtime = celery_runtime(self.settings)

    def enqueue(self, endpoint: str, request: Mapping[str, Any], **options: Any) -> JobHandle:
        """Validate and enqueue one job; see ``fluxq.enqueue`` for the options."""
        return JobHandle(self, enqueue_job(self.runtime, endpoint, request, **options))

    def enqueue_many(
        self,
        endpoint: str | None,
        requests: Iterable[Mapping[str, Any]],
        *,
        batch: str,
        priority: int = DEFAULT_BATCH_PRIORITY,
        budget: float | None = None,
    ) -> EnqueueResult:
        """Validate every request, then enqueue them all as lines of ``batch``; see
        ``fluxq.enqueue_many``."""
        return _enqueue_many(self.runtime, endpoint, requests, batch, priority, budget)

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


def enqueue_many(
    endpoint: str | None,
    requests: Iterable[Mapping[str, Any]],
    *,
    batch: str,
    priority: int = DEFAULT_BATCH_PRIORITY,
    budget: float | None = None,
) -> EnqueueResult:
    """Enqueue many jobs as one batch, at bulk speed; returns how many were added.

    Each request is a dict of request fields, optionally with its own ``id`` (else a digest of
    its content), ``name`` (its file stem, else the id) and ``endpoint`` (else ``endpoint``).
    Every request is validated first, in constant memory: if any is bad, InvalidRequest names
    the first 20 (``[position].field``) and nothing is enqueued (no requests at all is refused
    too, as is a cancelled batch: ``fluxq batch submit``'s rules). Job ids are ``{batch}.{id}``,
    so enqueueing the same requests again adds only those missing. ``budget`` (credits) pauses
    the batch before it would spend more; ``priority`` orders batches among themselves.
    """
    return default_client().enqueue_many(
        endpoint, requests, batch=batch, priority=priority, budget=budget
    )


def _enqueue_many(
    rt: Runtime,
    endpoint: str | None,
    requests: Iterable[Mapping[str, Any]],
    batch: str,
    priority: int,
    budget: float | None,
) -> EnqueueResult:
    problems = batch_problems(
        batch, endpoint=endpoint, priority=priority, budget=budget, catalog=rt.settings.catalog
    )
    if problems:  # before ``requests`` is read; the batch's ``name`` is ``batch`` here
        named = [FieldError(("batch",) if e.loc == ("name",) else e.loc, e.msg) for e in problems]
        raise InvalidRequest("invalid batch", errors=named)
    with tempfile.TemporaryDirectory(prefix="fluxq-many-") as tmp:
        # The requests become a JSONL file and go in as a batch file does (``submit_file``): the
        # same limits, validation, ids and duplicate rules as ``fluxq batch submit``.
        lines = Path(tmp) / "requests.jsonl"
        with lines.open("w", encoding="utf-8") as out:
            for position, request in enumerate(requests, start=1):
                out.write(_json_line(position, request))
        try:
            submitted = submit_file(
                rt,
                lines,
                name=batch,
                endpoint=endpoint,
                fmt="jsonl",
                priority=priority,
                budget=budget,
            )
        except BadLines as exc:  # a line is a request, named by its position
            scan = exc.scan
            raise InvalidRequest(
                f"{scan.error_count} of {scan.lines} requests are invalid; nothing enqueued",
                errors=[FieldError((f"[{e.loc[0]}]", *e.loc[1:]), e.msg) for e in exc.errors],
            ) from None
        except NoLines:
            raise InvalidRequest("no requests: nothing enqueued") from None
    return submitted.enqueued


def _json_line(position: int, request: object) -> str:
    """One request as a JSONL line; InvalidRequest naming its position when it cannot be one."""
    try:
        if not isinstance(request, Mapping):
            raise TypeError(f"a request is a dict of fields, not {type(request).__name__}")
        # ASCII escapes: a lone surrogate reaches scan_file, which names its field.
        return json.dumps(dict(request), ensure_ascii=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            "invalid request", errors=[FieldError((f"[{position}]",), str(exc))]
        ) from None


def enqueue(endpoint: str, request: Mapping[str, Any], **options: Any) -> JobHandle:
    """Validate and enqueue one job; returns its handle.

    Options: ``job_id`` (re-enqueueing an id is a no-op), ``batch``, ``name``, ``priority`` (0..9,
    higher first), ``callback`` (a Celery signature run with ``fluxq_job=<outcome>``) and
    ``webhook_url``. Raises ``config.errors.InvalidRequest`` naming every bad field, before any
    credit is spent. Settings come from the environment: ``FLUXQ_REDIS_URL``, else the embedded
    Redis the ``fluxq`` commands share.
    """
    return default_client().enqueue(endpoint, request, **options)
