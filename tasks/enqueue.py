"""Enqueue: validate a request before any credit is spent, record the job, admit it.

``enqueue(rt, ...)`` for Python callers (``fluxq.enqueue`` wraps it); the ``fluxq.enqueue`` Celery
task below for services that send by name.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from celery import Task, shared_task

from config.catalog import get_endpoint, request_to_json, validate_request
from config.errors import FieldError, InvalidRequest
from tasks.admission import admit_and_dispatch
from workers.dispatch import runtime_of
from workers.runtime import Runtime
from workers.state import keys
from workers.state.jobs import DEFAULT_PRIORITY, MAX_PRIORITY, NewJob

DEFAULT_BATCH = "default"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SECRET_FIELDS = ("webhook_secret",)


def _check_id(kind: str, value: str, errors: list[FieldError]) -> None:
    if not ID_PATTERN.match(value):
        errors.append(
            FieldError(
                loc=(kind,),
                msg="use 1-128 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit)",
            )
        )


def _callback_json(callback: object) -> str | None:
    """A Celery signature (or its dict form) as JSON; it must carry no secrets of its own."""
    if callback is None:
        return None
    as_dict = dict(callback) if isinstance(callback, Mapping) else None
    if as_dict is None or "task" not in as_dict:
        raise InvalidRequest(
            "invalid callback",
            errors=[FieldError(loc=("callback",), msg="must be a Celery signature or its dict")],
        )
    return json.dumps(as_dict, default=str)


def prepare_job(
    rt: Runtime,
    endpoint: str,
    request: Mapping[str, Any],
    *,
    job_id: str | None = None,
    batch: str = DEFAULT_BATCH,
    name: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    callback: object = None,
    webhook_url: str | None = None,
) -> NewJob:
    """Validate everything about one job and build its record; InvalidRequest names the fields."""
    spec = get_endpoint(endpoint)
    errors: list[FieldError] = []
    for field in SECRET_FIELDS:
        if request.get(field) is not None:
            errors.append(
                FieldError(
                    loc=("body", field),
                    msg="secrets are never stored in jobs; fluxq signs its own webhooks "
                    "(FLUXQ_WEBHOOK_SECRET)",
                )
            )
    job_id = job_id or uuid.uuid4().hex
    _check_id("job_id", job_id, errors)
    _check_id("batch", batch, errors)
    if name is not None:
        _check_id("name", name, errors)
    if not 0 <= priority <= MAX_PRIORITY:
        errors.append(FieldError(loc=("priority",), msg=f"must be 0..{MAX_PRIORITY}"))
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        errors.append(FieldError(loc=("webhook_url",), msg="must be an http(s) URL"))
    try:
        model = validate_request(endpoint, request)
    except InvalidRequest as exc:
        errors = list(exc.errors) + errors
    if errors:
        raise InvalidRequest(f"invalid job for {endpoint}", errors=errors)
    return NewJob(
        job_id=job_id,
        endpoint=endpoint,
        request_json=json.dumps(request_to_json(model)),
        batch=batch,
        name=name or job_id,
        priority=priority,
        group=spec.cap_group or keys.DEFAULT_GROUP,
        key_label=rt.label,
        callback_json=_callback_json(callback),
        webhook_url=webhook_url,
    )


def enqueue(
    rt: Runtime,
    endpoint: str,
    request: Mapping[str, Any],
    **options: Any,
) -> str:
    """Validate, record and admit one job; returns its id. Enqueueing an existing id is a no-op."""
    job = prepare_job(rt, endpoint, request, **options)
    rt.store.enqueue(job, now_s=rt.clock())
    admit_and_dispatch(rt)
    return job.job_id


@shared_task(name="fluxq.enqueue", bind=True, acks_late=True)
def enqueue_task(self: Task, request: dict[str, Any], endpoint: str, **options: Any) -> str:
    """Celery task for other services: kwargs ``request`` (JSON), ``endpoint`` and optional
    ``job_id``, ``batch``, ``name``, ``priority``, ``callback``, ``webhook_url``.

    Without a job_id the message's task id is used: a redelivered message (a worker died
    before acking) then finds its job already there instead of creating and billing another.
    """
    options.setdefault("job_id", self.request.id)
    return enqueue(runtime_of(self.app), endpoint, request, **options)
