"""Enqueue: validate a request before any credit is spent, record the job, admit it.

``enqueue(rt, ...)`` for Python callers (``fluxq.enqueue`` wraps it); the ``fluxq.enqueue`` Celery
task below for services that send by name (its body is ``enqueue_message``). Both take input from
outside: any value of any type either makes a job or raises one InvalidRequest naming every bad
field, never another exception.

A job's file is ``<output_dir>/<batch>/<name>.<ext>`` (``tasks/save.py``): the job id and batch
must be their own ``safe_name``; a name is stored as its ``safe_name`` (the file stem), and a
second job of the batch with the same stem is refused (the store checks it in its enqueue step).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from celery import Task, shared_task
from pydantic import BaseModel

from fluxq.config.catalog import (
    NOT_UTF8,
    RESERVED_FIELD_TEXT,
    Catalog,
    EndpointSpec,
    escape_surrogates,
    get_endpoint,
    not_utf8_at,
    request_to_json,
    reserved_fields_in,
    validate_request,
)
from fluxq.config.celery import ENQUEUE
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.redact import redact, secrets_of
from fluxq.tasks.admission import admit_and_dispatch
from fluxq.tasks.notify import full_signature, webhook_url_problem
from fluxq.workers.dispatch import runtime_of
from fluxq.workers.files import (
    ID_HINT,
    ID_PATTERN,
    NAME_HINT,
    NAME_PATTERN,
    SECRET_FIELDS,
    safe_name,
)
from fluxq.workers.redacted_task import RedactedTask
from fluxq.workers.runtime import Runtime
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import DEFAULT_PRIORITY, MAX_PRIORITY, NewJob

log = logging.getLogger("fluxq.enqueue")

DEFAULT_BATCH = "default"
TASK_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:[.:][A-Za-z_][A-Za-z0-9_-]*)*")
"""A Celery task name such as ``myapp.tasks.on_image`` (used with fullmatch)."""
MAX_TASK_NAME_CHARS = 255
OPTIONS = ("job_id", "batch", "name", "priority", "callback", "webhook_url")
"""The keyword options of ``enqueue`` and of a ``fluxq.enqueue`` message, besides request and
endpoint."""


def _type_error(value: object, expected: str) -> str:
    return f"must be {expected}, not {type(value).__name__}"


def _text(
    kind: str, value: object, pattern: re.Pattern[str], hint: str, errors: list[FieldError]
) -> str:
    """``value`` when it is a string matching ``pattern`` whole; else record why and give ""."""
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    msg = hint if isinstance(value, str) else f"{_type_error(value, 'a string')}; {hint}"
    errors.append(FieldError(loc=(kind,), msg=msg))
    return ""


def _priority(value: object, errors: list[FieldError]) -> int:
    """A whole number 0..MAX_PRIORITY (a bool is not one here; ``7.0`` is, as JSON reads it)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        expected = f"a whole number 0..{MAX_PRIORITY}"
        errors.append(FieldError(loc=("priority",), msg=_type_error(value, expected)))
        return DEFAULT_PRIORITY
    if not 0 <= value <= MAX_PRIORITY:
        errors.append(FieldError(loc=("priority",), msg=f"must be 0..{MAX_PRIORITY}"))
    return value


def _callback_problem(callback: Mapping[Any, Any]) -> str | None:
    task = callback.get("task")
    if not isinstance(task, str) or not task:
        return "its task must be a non-empty Celery task name"
    if len(task) > MAX_TASK_NAME_CHARS or not TASK_NAME_PATTERN.fullmatch(task):
        return "its task is not a Celery task name (such as myapp.tasks.on_image)"
    if not isinstance(callback.get("args", ()), list | tuple):
        return "its args must be a list"
    kwargs = callback.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        return "its kwargs must be a dict with string keys"
    if not isinstance(callback.get("options", {}), Mapping):
        return "its options must be a dict"
    return None


def _refuse_callback(msg: str, errors: list[FieldError]) -> str | None:
    """Record why the callback is refused; None, its JSON, for the caller to return."""
    errors.append(FieldError(loc=("callback",), msg=msg))
    return None


def _callback_json(callback: object, errors: list[FieldError]) -> str | None:
    """A Celery signature (or its dict form) as JSON; it must carry no secrets of its own."""
    if callback is None:
        return None
    if not isinstance(callback, Mapping):
        msg = "must be a Celery signature or its dict (task, args, kwargs, options)"
        return _refuse_callback(msg, errors)
    problem = _callback_problem(callback)
    if problem is not None:
        return _refuse_callback(problem, errors)
    try:
        # args, kwargs and options are stored even when not given: Celery reads a signature's
        # dict as it is, and one without options fails when it is sent (see full_signature).
        text = json.dumps(full_signature(callback), default=str)
        where = not_utf8_at(json.loads(text))
    except (TypeError, ValueError, RecursionError):  # a key JSON cannot hold, a cycle
        msg = "must be JSON: a dict of lists, dicts, strings, numbers and null"
        return _refuse_callback(msg, errors)
    if where is not None:
        # Celery would send it escaped, but a queue or routing key in options would not encode,
        # and a service reading it gets no text: refused like a request's string.
        errors.append(FieldError(loc=("callback", *where), msg=NOT_UTF8))
        return None
    return text


def _webhook_url(url: object, errors: list[FieldError]) -> str | None:
    if url is None:
        return None
    problem = webhook_url_problem(url)
    if problem is not None:
        errors.append(FieldError(loc=("webhook_url",), msg=problem))
        return None
    assert isinstance(url, str)
    return url


def _unknown_options(options: Mapping[str, object], errors: list[FieldError]) -> None:
    known = ", ".join(("endpoint", "request", *OPTIONS))
    for option in options:
        if option not in OPTIONS:
            msg = f"unknown option; known: {known}"
            errors.append(FieldError(loc=(escape_surrogates(str(option)),), msg=msg))


def _endpoint(catalog: Catalog, endpoint: object, errors: list[FieldError]) -> EndpointSpec | None:
    if not isinstance(endpoint, str):
        msg = _type_error(endpoint, "a string naming an endpoint")
        errors.append(FieldError(loc=("endpoint",), msg=msg))
        return None
    try:
        return get_endpoint(endpoint, catalog=catalog)
    except InvalidRequest as exc:
        errors.extend(exc.errors)
        return None


def _request(
    catalog: Catalog,
    spec: EndpointSpec | None,
    endpoint: object,
    request: object,
    errors: list[FieldError],
) -> BaseModel | None:
    """The validated request body; secrets in it are refused (fluxq signs its own webhooks), and
    so is, for an open endpoint, every field fluxq sets itself."""
    if not isinstance(request, Mapping):
        msg = _type_error(request, "a JSON object (a dict of request fields)")
        errors.append(FieldError(loc=("request",), msg=msg))
        return None
    secrets = [field for field in SECRET_FIELDS if request.get(field) is not None]
    for field in secrets:
        errors.append(
            FieldError(
                loc=("body", field),
                msg="secrets are never stored in jobs; fluxq signs its own webhooks "
                "(FLUXQ_WEBHOOK_SECRET)",
            )
        )
    if spec is None or not isinstance(endpoint, str):
        return None
    for field in reserved_fields_in(spec, request):
        if field not in secrets:
            errors.append(FieldError(loc=("body", field), msg=RESERVED_FIELD_TEXT))
    try:
        return validate_request(endpoint, request, catalog=catalog)
    except InvalidRequest as exc:
        errors[:0] = exc.errors  # the body's errors first, as before
        return None


def _body(model: BaseModel | None, errors: list[FieldError]) -> dict[str, Any] | None:
    """The JSON body BFL will be sent, when every string in it encodes as UTF-8 (httpx sends it
    so: a lone surrogate would fail at submit, after the job was queued); else the field."""
    if model is None:
        return None
    body = request_to_json(model)
    where = not_utf8_at(body)
    if where is not None:
        errors.insert(0, FieldError(loc=("body", *where), msg=NOT_UTF8))  # the body's errors first
        return None
    return body


def _prepare(rt: Runtime, endpoint: object, request: object, options: Mapping[str, Any]) -> NewJob:
    """Validate one job from untrusted values; InvalidRequest names every bad field at once."""
    errors: list[FieldError] = []
    _unknown_options(options, errors)
    catalog = rt.settings.catalog
    spec = _endpoint(catalog, endpoint, errors)
    body = _body(_request(catalog, spec, endpoint, request, errors), errors)
    given_id = options.get("job_id")
    job_id = _text(
        "job_id", uuid.uuid4().hex if given_id is None else given_id, ID_PATTERN, ID_HINT, errors
    )
    # Every option may come as null (JSON from another service): it means "not given".
    given_batch = options.get("batch")
    batch = _text(
        "batch", DEFAULT_BATCH if given_batch is None else given_batch, ID_PATTERN, ID_HINT, errors
    )
    name = options.get("name")
    if name is not None:
        name = _text("name", name, NAME_PATTERN, NAME_HINT, errors)
    given_priority = options.get("priority")
    priority = _priority(DEFAULT_PRIORITY if given_priority is None else given_priority, errors)
    webhook_url = _webhook_url(options.get("webhook_url"), errors)
    callback_json = _callback_json(options.get("callback"), errors)
    if errors or spec is None or body is None or not isinstance(endpoint, str):
        where = f" for {endpoint}" if spec is not None else ""
        raise InvalidRequest(f"invalid job{where}", errors=errors)
    return NewJob(
        job_id=job_id,
        endpoint=endpoint,
        request_json=json.dumps(body),
        batch=batch,
        name=safe_name(name or job_id),
        priority=priority,
        group=spec.cap_group or keys.DEFAULT_GROUP,
        key_label=rt.label,
        callback_json=callback_json,
        webhook_url=webhook_url,
    )


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
    **unknown: object,
) -> NewJob:
    """Validate everything about one job and build its record; InvalidRequest names the fields.

    Values are checked whatever their type (they may come from JSON); an unknown keyword is
    refused by name. The job's ``name`` is its file stem: ``safe_name(name or job_id)``.
    """
    options = {
        "job_id": job_id,
        "batch": batch,
        "name": name,
        "priority": priority,
        "callback": callback,
        "webhook_url": webhook_url,
        **unknown,
    }
    return _prepare(rt, endpoint, request, options)


def _enqueue(rt: Runtime, endpoint: object, request: object, options: Mapping[str, Any]) -> str:
    job = _prepare(rt, endpoint, request, options)
    # NameTaken (an InvalidRequest naming "name") when another job of the batch holds the name.
    rt.store.enqueue(job, now_s=rt.clock())
    admit_and_dispatch(rt)
    return job.job_id


def enqueue(
    rt: Runtime,
    endpoint: str,
    request: Mapping[str, Any],
    **options: Any,
) -> str:
    """Validate, record and admit one job; returns its id. Enqueueing an existing id is a no-op.

    InvalidRequest names every bad field, an unknown option, or a name (file stem) another job
    of the batch already holds.
    """
    return _enqueue(rt, endpoint, request, options)


def enqueue_message(rt: Runtime, kwargs: Mapping[str, Any], *, message_id: str | None) -> str:
    """The body of ``fluxq.enqueue``: a message's kwargs, as another service sent them.

    Without a job_id (or with a null one) the message's task id is used: a redelivered message
    (a worker died before acking) then finds its job already there instead of creating and
    billing another.
    """
    options = dict(kwargs)
    endpoint = options.pop("endpoint", None)
    request = options.pop("request", None)
    if options.get("job_id") is None and message_id is not None:
        options["job_id"] = message_id
    return _enqueue(rt, endpoint, request, options)


def refuse_message(
    rt: Runtime, kwargs: Mapping[str, Any], exc: InvalidRequest, *, message_id: str
) -> str:
    """Record a refused ``fluxq.enqueue`` message as a failed job the sender can look up.

    The job id is the message's own ``job_id`` when that is a valid id, else the message's task
    id; the batch likewise (else ``default``). The reason names every bad field.
    """
    given = kwargs.get("job_id")
    job_id = given if isinstance(given, str) and ID_PATTERN.fullmatch(given) else message_id
    batch = kwargs.get("batch")
    if not (isinstance(batch, str) and ID_PATTERN.fullmatch(batch)):
        batch = DEFAULT_BATCH
    endpoint = kwargs.get("endpoint")
    fields = {"endpoint": endpoint} if isinstance(endpoint, str) and len(endpoint) <= 100 else {}
    if not_utf8_at(fields) is not None:  # Redis stores text as UTF-8: that would not
        fields = {}
    # The reason names fields, never their values; should one hold a lone surrogate anyway,
    # it is escaped, or recording the refusal would fail the way sending the job would have.
    reason = escape_surrogates(redact(f"refused: {exc}", secrets_of(rt.settings)))
    rt.store.record_refused(job_id, batch=batch, reason=reason, now_s=rt.clock(), fields=fields)
    return job_id


@shared_task(name=ENQUEUE.name, base=RedactedTask, bind=True, acks_late=True)
def enqueue_task(self: Task, request: Any = None, endpoint: Any = None, **options: Any) -> str:
    """Celery task for other services: kwargs ``request`` (JSON), ``endpoint`` and optional
    ``job_id``, ``batch``, ``name``, ``priority``, ``callback``, ``webhook_url``.

    Without a job_id the message's task id is the job id (see ``enqueue_message``). A request
    that is refused becomes a failed job under that id, its reason naming every bad field, so the
    sender can read it like any job's; the worker logs one line, no traceback.
    """
    rt = runtime_of(self.app)
    message = {"request": request, "endpoint": endpoint, **options}
    message_id = self.request.id or uuid.uuid4().hex
    try:
        return enqueue_message(rt, message, message_id=message_id)
    except InvalidRequest as exc:
        job_id = refuse_message(rt, message, exc, message_id=message_id)
        log.warning("refused fluxq.enqueue job=%s fields=%s", job_id, ",".join(exc.fields))
        return job_id
