"""The HTTP API (``fluxq api``): jobs and batches over HTTP for services without Celery or Python.

Every way in goes through the same code as the other front doors: a job through
``tasks.enqueue`` (the same checks, so a bad body is refused with every bad field named), a batch
through ``fluxq.batch_submit.submit_file`` (as ``fluxq batch submit``). Errors use BFL's own 422
shape, ``{"detail": [{"loc", "msg", "type"}]}``, so a client already written for BFL reads ours
too; no traceback ever reaches a client.

``create_app(settings)`` builds the app; one producer Runtime is made at start-up and closed at
shutdown. ``python -m fluxq.api`` prints the OpenAPI document (``docs/openapi.json``).

Safe against a browser tab: a page of another site can send a POST that needs no CORS preflight
(a ``text/plain`` body, a form), and DNS rebinding can make a page's own name resolve to
127.0.0.1. So the JSON and NDJSON routes take only their own content types (a browser cannot send
those cross-site without a preflight, which gets no CORS headers here), a state-changing request
that a browser marks as coming from another origin or site is 403, and with ``hosts`` (``fluxq
api`` always passes them) a ``Host`` header not on the allow-list is 400.

Safe against a careless client: the work that can block (Redis, parsing a body, files) runs in
threads, never on the event loop; a job's body has its own small limit; long polls are bounded;
outside text reaches the log escaped and cut.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import re
import sys
import tempfile
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import anyio
import redis
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxq import api_schemas
from fluxq.api_bfl_webhooks import Answer, receive
from fluxq.batch_submit import (
    BadLines,
    BadParameters,
    CancelledBatch,
    FileRefused,
    NoLines,
    batch_problems,
    submit_file,
)
from fluxq.cli.api import AllowedHosts
from fluxq.cli.batch_view import status_json
from fluxq.cli.waits import read_batch_view
from fluxq.config.catalog import Catalog, escape_surrogates
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.settings import Settings, load_settings
from fluxq.job_events import JobEvents
from fluxq.long_poll_gate import LongPollGate
from fluxq.long_poll_gate import refusal as long_poll_refusal
from fluxq.tasks.batches import batch_status, cancel_batch, cancel_job, report_rows
from fluxq.tasks.enqueue import enqueue, prepare_job
from fluxq.tasks.inline_submit import InlineSubmits
from fluxq.tasks.sweep import workers_seen
from fluxq.workers.bfl.webhooks import MAX_WEBHOOK_BYTES, WEBHOOK_PATH
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.metrics import registry_for
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.batches import DEFAULT_BATCH_PRIORITY, BatchStatus
from fluxq.workers.state.jobs import MAX_PRIORITY, Job, State
from fluxq.workers.state.store import NameTaken, ReplicaShortfall

log = logging.getLogger("fluxq.api")

UNREPLICATED = (
    "no Redis replica confirmed the write in time (FLUXQ_REDIS_MIN_REPLICAS): it may have been "
    "made; send it again with the same job id (found, not made twice)"
)

MAX_WAIT_S = 60.0
"""The longest ``wait_s`` a long poll holds a request: under common proxies' idle timeouts."""

WAIT_STEP_S = 0.15
"""How often a wait without JobEvents (an app whose lifespan did not run) reads its job."""

MAX_LONG_POLLS = 256
"""Long polls (``wait_s`` > 0) held at once, each a connection and a waiter (their reads are
shared: ``fluxq/job_events.py``). One more is 503 with ``Retry-After``, most of them sent by
``LongPollGate`` before FastAPI's stack (``fluxq/long_poll_gate.py``)."""

LONG_POLL_RETRY_AFTER_S = 1
"""Retry-After on a long poll refused because MAX_LONG_POLLS are held."""

MAX_JSON_DEPTH = 32
"""Nesting a job's JSON body may have (a BFL request nests two or three levels): deeper is 422,
never a RecursionError (500) in the checks that walk it."""

MAX_LOGGED_CHARS = 200
"""Outside text (a job id from a URL, an error's text) is cut to this in the log."""

JSON_TYPES = ("application/json",)
"""The content type ``POST /v1/jobs`` takes: a page of another site cannot send it (a preflight
is due, and no CORS headers answer it), unlike text/plain or a form's types."""

BATCH_TYPES = ("application/x-ndjson", "application/jsonl")
"""The content types ``POST /v1/batches`` takes (one JSON request per line): never text/plain."""

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""Methods refused when a browser says another origin or site sent them."""

JOB_OPTIONS = ("job_id", "batch", "name", "priority", "webhook_url")
"""The options ``POST /v1/jobs`` accepts besides endpoint and request. ``callback`` (a Celery
signature) is not one: over HTTP it would let any client run any task the workers know."""


# --- bodies (module level: FastAPI reads these annotations at runtime) --------------------------


class JobCreated(BaseModel):
    id: str
    state: State
    batch: str


class JobOut(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` shows it; ``times`` maps a state to when it was entered."""

    id: str
    state: State
    reason: str | None
    endpoint: str
    batch: str
    name: str
    priority: int
    times: dict[str, float]
    cost: float | None
    seed: int | None
    path: str | None
    sha256: str | None
    uncertain: bool
    created_at: float


class JobCancelled(BaseModel):
    id: str
    state: State


class BatchCreated(BaseModel):
    batch: str
    added: int
    already_there: int
    conflicts: int
    lines: int


class KeySlotsOut(BaseModel):
    """The batch's API key's slots now: what holds them, and the cap admission uses."""

    key_cap: int = Field(description="The key's active-task cap (FLUXQ_ACTIVE_CAP).")
    effective_cap: int = Field(
        description="The AIMD cap (below key_cap after a 429): it limits the tasks known to run."
    )
    allowed: int = Field(
        description="Leases admission allows now: effective_cap plus the doubtful holds, at "
        "most key_cap."
    )
    held: int = Field(description="Leases held: at_bfl + sending + doubtful + stale.")
    at_bfl: int = Field(description="Tasks running at BFL.")
    sending: int = Field(
        description="POSTs being sent, or tried again after BFL refused them (nothing created)."
    )
    doubtful: int = Field(
        description="Slots held for doubtful POSTs: jobs failed as uncertain whose task may "
        "still run at BFL."
    )
    doubtful_next_end: float | None = Field(
        description="When the first doubtful hold ends (Unix time); null when none is held."
    )
    doubtful_until: float | None = Field(
        description="When the last doubtful hold ends (Unix time); null when none is held."
    )
    stale: int = Field(description="Leases of jobs that ended: the next sweep frees them.")
    by_batch: dict[str, int] = Field(
        description="Slots held by each batch's jobs (at BFL or being sent)."
    )
    pause: str | None = Field(description="Why admission is paused, if it is.")
    pause_until: float | None = Field(
        description="When the pause ends (Unix time); null for none, or until resumed."
    )


class BatchOut(BaseModel):
    """A batch as ``GET /v1/batches/{name}`` shows it (``fluxq batch status --json``)."""

    batch: str
    counts: dict[str, int] = Field(description="Jobs by state, and how many are uncertain.")
    total: int
    priority: int
    created_at: float | None
    started_at: float | None
    budget: float | None
    committed: float
    spent: float
    paused: str | None = Field(description="The batch's own pause: budget or cancelled.")
    reasons: dict[str, int] = Field(description="Failed jobs by the first clause of the reason.")
    images_per_minute: float | None
    eta_s: float | None
    waiting: int
    finished: bool
    slots: KeySlotsOut
    wait_reason: str | None = Field(
        description="Why the batch does not move, in one line with when admission expects to "
        "take a job again: its lines wait, none of its jobs holds a slot, and admission takes "
        "none (a pause, or every slot taken: by what, for which batches). Null otherwise."
    )


class BatchCancelled(BaseModel):
    batch: str
    lines: int
    jobs: int


class Problem(BaseModel):
    """An error that names no field: 400, 401, 403, 404, 409, 413, 415, 500, 503."""

    detail: str


class JobConflict(Problem):
    """A job that cannot be cancelled: it was admitted or sent, or it ended."""

    state: State


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """BFL's 422 shape: every bad field, each with where it is and why."""

    detail: list[FieldProblem]


class BatchInvalid(Invalid):
    """A refused batch file: its first bad lines (``["body", line, field]``), and how many."""

    lines: int | None = Field(default=None, description="Lines in the file.")
    invalid: int | None = Field(default=None, description="Bad lines (all, not only those named).")


class Readiness(BaseModel):
    redis: bool = Field(description="Redis answers.")
    workers: int = Field(description="Worker processes that beat lately.")


def _problem(status: int, detail: str, **extra: object) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _invalid(problems: Sequence[Mapping[str, object]], **extra: object) -> JSONResponse:
    return JSONResponse({"detail": list(problems), **extra}, status_code=422)


def _field(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, object]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def body_loc(error: FieldError) -> list[str | int]:
    """fluxq's ``loc`` as BFL would name it in this API's body: ``("body", "prompt")`` (a request
    field) becomes ``["body", "request", "prompt"]``, ``("priority",)`` ``["body", "priority"]``."""
    loc = list(error.loc)
    if loc and loc[0] == "body":
        return ["body", "request", *loc[1:]]
    return ["body", *loc]


# --- the body limit ----------------------------------------------------------------------------


class BodyLimit:
    """413 for a body over its route's limit: told by Content-Length up front, else counted as it
    streams in (chunked bodies, or a Content-Length that lied), so no route ever holds more.

    ``POST /v1/jobs`` has its own limit (``job_bytes``, FLUXQ_API_MAX_JOB_BYTES): one job's body
    is parsed whole, so it must stay small; every other route has ``max_bytes`` (the batch route
    streams its body to disk)."""

    def __init__(self, app: ASGIApp, max_bytes: int, job_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.job_bytes = job_bytes

    def _limit(self, scope: Scope) -> tuple[int, str]:
        job_bytes = self.job_bytes
        is_job = scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/v1/jobs"
        if is_job and job_bytes is not None and job_bytes < self.max_bytes:
            return job_bytes, "FLUXQ_API_MAX_JOB_BYTES"
        return self.max_bytes, "FLUXQ_API_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        message = f"request body over {limit:,} bytes ({setting})"
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _problem(413, message)(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            received = await receive()
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, message)
            return received

        await self.app(scope, counted, send)


# --- a browser tab, and outside text -----------------------------------------------------------

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def loggable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` safe for a log line: control characters (a newline starts a forged line) escaped
    as ``\\n``, ``\\x1b``…, and cut to ``limit`` characters with the full length said."""
    if len(text) > limit:
        text = f"{text[:limit]}…({len(text):,} characters)"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OutsideText(logging.Filter):
    """Every string (and exception) argument of a record made loggable: the API logs job ids
    taken from URLs, and errors quoting bodies, that anyone can send."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                loggable(arg if isinstance(arg, str) else str(arg))
                if isinstance(arg, str | BaseException)
                else arg
                for arg in record.args
            )
        return True


API_LOGGERS = ("fluxq.api", "fluxq.bfl_webhook", "fluxq.inline_submit")
"""The loggers the API's requests write to (a filter acts on its own logger's records only)."""


def _filter_logs() -> None:
    for name in API_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OutsideText) for f in logger.filters):
            logger.addFilter(OutsideText())


def _same_origin(origin: str, host: str) -> bool:
    """True when ``origin`` (an Origin header) is this server's own: its host and port are the
    ``Host`` header's (a default port written or not). ``null`` is never."""
    scheme, sep, netloc = origin.strip().lower().partition("://")
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if not sep or default is None or not netloc or "/" in netloc:
        return False
    host = host.strip().lower()
    return netloc.removesuffix(default) == host.removesuffix(default)


def cross_site(headers: Headers) -> str | None:
    """Why a state-changing request came from another site's page, or None.

    A browser says where a request comes from: ``Sec-Fetch-Site`` (cross-site and same-site
    are refused, same-origin and none pass) and ``Origin`` (on every POST, and on any
    cross-origin request). A client that is not a browser (curl, httpx, BFL's webhooks) sends
    neither, and passes."""
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        return f"refused: a {site} request from a browser page (Sec-Fetch-Site)"
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, headers.get("host", "")):
        return f"refused: a request from a page of another origin ({loggable(origin, 100)})"
    return None


class RequestGuard:
    """Before any route: 400 when ``hosts`` is given and the ``Host`` header is not on it (DNS
    rebinding), 403 for a state-changing request a browser sent from another origin or site."""

    def __init__(self, app: ASGIApp, hosts: AllowedHosts | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self.hosts is not None and not self.hosts.allows(host):
            shown = loggable(host, 100) if host is not None else "(none)"
            detail = f"Host {shown} is not a name of this server (FLUXQ_API_ALLOWED_HOSTS)"
            await _problem(400, detail)(scope, receive, send)
            return
        if scope["method"] in STATE_CHANGING:
            refusal = cross_site(headers)
            if refusal is not None:
                await _problem(403, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def require_type(request: Request, accepted: Sequence[str]) -> None:
    """415 unless the body's Content-Type (its parameters aside) is one of ``accepted``."""
    given = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if given not in accepted:
        shown = loggable(given, 100) if given else "none"
        raise HTTPException(
            415, f"Content-Type {shown} is not accepted: send {' or '.join(accepted)}"
        )


# --- the app -----------------------------------------------------------------------------------


async def _runtime(request: Request) -> Runtime:
    """Async: a plain ``def`` dependency is run in the threadpool, one hop per request for an
    attribute read (2,000 long polls arriving queued 2,000 hops, even the ones refused)."""
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


BEARER = HTTPBearer(auto_error=False, description="FLUXQ_API_TOKEN, when the server has one.")
"""Reads the header only; ``_auth`` decides (auto_error would answer 403 where 401 is due)."""

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def _auth(settings: Settings) -> Callable[..., Awaitable[None]]:
    """A dependency requiring ``Authorization: Bearer <FLUXQ_API_TOKEN>`` when a token is set."""
    token = settings.api_token

    async def check(credentials: Credentials) -> None:
        if token is None:
            return  # no token: the CLI binds loopback only
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    return check


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A Host header not on FLUXQ_API_ALLOWED_HOSTS."},
    500: {"model": Problem, "description": "An unexpected error (logged; no traceback is sent)."},
}
"""What any route may answer (RequestGuard, the last error handler)."""

AUTH: dict[int | str, dict[str, Any]] = {
    401: {
        "model": Problem,
        "description": "No token, or a wrong one (when the server has FLUXQ_API_TOKEN).",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    },
}

INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": Invalid, "description": "Every bad field, in BFL's shape."},
}

REDIS_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "Redis is unavailable."},
}

CROSS_SITE: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "Sent by a browser page of another origin or site."},
}

WRONG_TYPE: dict[int | str, dict[str, Any]] = {
    415: {"model": Problem, "description": "A body of another Content-Type."},
}


def create_app(settings: Settings, *, hosts: AllowedHosts | None = None) -> FastAPI:
    """The API for ``settings``; its Runtime (Redis, Celery producer) lives as long as the app.

    ``hosts``: the ``Host`` headers answered (``fluxq api`` passes its allow-list); None checks
    no Host, for an app driven in-process (tests) or behind a server that checks it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:

        rt = celery_runtime(settings)
        # The slot a webhook frees is refilled from here, with no Celery hop (inline_submit).
        inline = None
        if settings.api_submits and settings.bfl_api_key is not None:
            inline = InlineSubmits.install(rt)
        app.state.runtime = rt
        app.state.registry = registry_for(settings, rt.redis)
        app.state.webhook_threads = anyio.CapacityLimiter(WEBHOOK_THREADS)
        loop = asyncio.get_running_loop()
        app.state.job_events = JobEvents(rt.redis, loop, rt.store.get_many).start()
        try:
            yield
        finally:
            app.state.job_events.close()
            if inline is not None:
                inline.close()  # the POSTs in flight are answered and recorded first
            rt.close()

    app = FastAPI(
        title="fluxq",
        version="1",
        description="FLUX image jobs and batches, run through the BFL API at the key's cap.",
        lifespan=lifespan,
        responses=ERRORS,
        docs_url=None,  # served by _add_docs, behind the token when one is set
        redoc_url=None,
        openapi_url=None,
    )
    app.state.long_polls = 0
    _filter_logs()
    app.add_middleware(
        LongPollGate,  # inside the Host and body checks, as the route is
        state=app.state,
        limit=lambda: MAX_LONG_POLLS,
        retry_after_s=LONG_POLL_RETRY_AFTER_S,
        token=settings.api_token,
    )
    app.add_middleware(
        BodyLimit, max_bytes=settings.api_max_body_bytes, job_bytes=settings.api_max_job_bytes
    )
    app.add_middleware(RequestGuard, hosts=hosts)  # outermost: before any body is read
    _add_error_handlers(app)
    auth = [Depends(_auth(settings))]
    _add_docs(app, auth, settings.catalog)
    _add_probes(app, auth)
    _add_job_routes(app, auth, settings.catalog)
    _add_batch_routes(app, auth, settings.catalog)
    _add_bfl_webhook_route(app)
    return app


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of this request's path takes (``Allow`` of a 405): a path with a
    GET and a DELETE route has both, where Starlette's own 405 names the first route's only."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only loc, msg and type: pydantic's "input" would echo the body (and any secret in it).
        problems = [
            _field(e.get("loc", ()), e.get("msg", ""), e.get("type", "")) for e in exc.errors()
        ]
        return _invalid(problems)

    @app.exception_handler(InvalidRequest)
    async def refused(_request: Request, exc: InvalidRequest) -> JSONResponse:
        problems = [_field(body_loc(e), e.msg) for e in exc.errors] or [_field(["body"], str(exc))]
        if isinstance(exc, NameTaken):  # a valid name another job holds: a conflict, not a typo
            return JSONResponse({"detail": problems}, status_code=409)
        return _invalid(problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = _problem(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # the router names only the first route of the path
            response.headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return response

    @app.exception_handler(redis.RedisError)
    async def redis_down(_request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        if isinstance(exc, ReplicaShortfall):
            return _problem(503, UNREPLICATED)
        return _problem(503, "redis unavailable")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _problem(500, "internal error")


def _add_docs(app: FastAPI, auth: list[Any], catalog: Catalog) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc``, behind the token when one is set (with one,
    a browser cannot open them: read ``docs/openapi.json`` instead). They describe the settings'
    endpoints: fluxq's own and any FLUXQ_ENDPOINTS_FILE declares."""

    def document() -> dict[str, Any]:
        """FastAPI's document, plus the schemas the bodies the code checks itself refer to."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        built = FastAPI.openapi(app)  # cached in app.openapi_schema, added to in place
        api_schemas.add_components(built, api_schemas.components(catalog).items())
        return built

    app.openapi = document  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="fluxq - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=auth)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="fluxq - ReDoc")


METRICS_TYPE = CONTENT_TYPE_LATEST.partition(";")[0]
"""``/metrics``' media type as documented: its parameters (the format's version) follow
prometheus_client, and the committed document must not."""


def _add_probes(app: FastAPI, auth: list[Any]) -> None:
    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, bool]:
        """The process is alive (always 200; it reads nothing, and waits for no thread)."""
        return {"alive": True}

    @app.get(
        "/readyz",
        tags=["probes"],
        response_model=Readiness,
        responses={
            503: {"model": Readiness, "description": "Redis is down, or no worker beat lately."}
        },
    )
    def readyz(rt: RuntimeDep) -> JSONResponse:
        """Ready when Redis answers and a worker process beat lately (each sweep tick)."""
        try:
            workers = workers_seen(rt)
        except redis.RedisError:
            return JSONResponse({"redis": False, "workers": 0}, status_code=503)
        body = {"redis": True, "workers": workers}
        return JSONResponse(body, status_code=200 if workers else 503)

    @app.get(
        "/metrics",
        tags=["probes"],
        dependencies=auth,
        response_class=Response,
        responses={
            200: {
                "content": {METRICS_TYPE: {"schema": {"type": "string"}}},
                "description": "The Prometheus text format.",
            },
            **AUTH,
            **REDIS_DOWN,
        },
    )
    def metrics(request: Request) -> Response:
        """Prometheus metrics, as ``fluxq metrics`` serves them (behind the token when set)."""

        body = generate_latest(request.app.state.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


# --- jobs --------------------------------------------------------------------------------------


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.job_id,
        state=job.state,
        reason=job.reason,
        endpoint=job.endpoint,
        batch=job.batch,
        name=job.name,
        priority=job.priority,
        times=job.times,
        cost=job.cost,
        seed=job.seed,
        path=job.path,
        sha256=job.sha256,
        uncertain=job.uncertain,
        created_at=job.created_at,
    )


def _not_found(job_id: str) -> HTTPException:
    return HTTPException(404, f"no job {job_id} (unknown, expired, or a batch line still waiting)")


def create_job(rt: Runtime, body: object) -> tuple[int, JobCreated]:
    """Validate and enqueue one job; (201, it) when new, (200, it) when its id exists already.

    Every bad field is named at once (InvalidRequest), the body's own checks and fluxq's
    together, before anything is written."""

    if not isinstance(body, dict):
        raise InvalidRequest("invalid job", errors=[FieldError((), "must be a JSON object")])
    options = {k: v for k, v in body.items() if k not in ("endpoint", "request")}
    unknown = [
        FieldError(
            (escape_surrogates(str(k)),),
            f"unknown field; known: endpoint, request, {', '.join(JOB_OPTIONS)}",
        )
        for k in options
        if k not in JOB_OPTIONS
    ]
    options = {k: v for k, v in options.items() if k in JOB_OPTIONS}
    endpoint, request = body.get("endpoint"), body.get("request")
    try:
        prepare_job(rt, endpoint, request, **options)  # type: ignore[arg-type]
    except InvalidRequest as exc:
        raise InvalidRequest("invalid job", errors=[*exc.errors, *unknown]) from None
    if unknown:
        raise InvalidRequest("invalid job", errors=unknown)
    given = options.get("job_id")
    existing = rt.store.get(given) if isinstance(given, str) else None
    if existing is not None:
        return 200, JobCreated(id=existing.job_id, state=existing.state, batch=existing.batch)
    job_id = enqueue(rt, endpoint, request, **options)  # type: ignore[arg-type]
    job = rt.store.get(job_id)
    if job is None:  # expired within the call: only with a tiny FLUXQ_JOB_TTL_S
        raise _not_found(job_id)
    return 201, JobCreated(id=job.job_id, state=job.state, batch=job.batch)


def json_too_deep(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` nests lists and objects more than ``limit`` levels (walked without
    recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def job_from_body(rt: Runtime, raw: bytes) -> JSONResponse:
    """``POST /v1/jobs`` off the event loop: parse the body, check it, enqueue (Redis)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        body = None
        too_deep = True
    except ValueError as exc:
        return _invalid([_field(["body"], f"not JSON: {loggable(str(exc))}", "json_invalid")])
    else:
        too_deep = json_too_deep(body)
    if too_deep:
        msg = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        return _invalid([_field(["body"], msg, "json_invalid")])
    status, created = create_job(rt, body)
    return JSONResponse(created.model_dump(mode="json"), status_code=status)


async def wait_for_job(
    rt: Runtime, job_id: str, wait_s: float, events: JobEvents | None = None
) -> JobOut:
    """The job once it ends or ``wait_s`` passes. A long poll (``events``, wait_s > 0) holds
    no thread: its reads are shared batches in ``events``' own thread, and it is woken when its
    job ends (its event, else a read every ``FALLBACK_S``); without ``events`` each read is a
    short call in the threadpool, every WAIT_STEP_S."""
    if events is not None and wait_s > 0:
        ended = await events.until_ended(job_id, wait_s)
        if ended is None:
            raise _not_found(job_id)
        return job_out(ended)
    deadline = time.monotonic() + wait_s
    while True:
        job = await run_in_threadpool(rt.store.get, job_id)
        if job is None:
            raise _not_found(job_id)
        left_s = deadline - time.monotonic()
        if job.state.terminal or left_s <= 0:
            return job_out(job)
        await asyncio.sleep(min(WAIT_STEP_S, left_s))


def image_response(rt: Runtime, job_id: str) -> FileResponse:
    """A done job's file with its content type and sha256 as ETag; else 404 saying why."""
    job = rt.store.get(job_id)
    if job is None:
        raise _not_found(job_id)
    if job.state is not State.DONE or not job.path:
        raise HTTPException(404, f"job {job_id} has no image: it is {job.state.value}")
    if "://" in job.path:  # saved to an object store (FLUXQ_OUTPUT_URL): stream it from there
        from fluxq.stored_image import stored_image_response  # lazy: fsspec, object stores only

        return stored_image_response(rt.settings, job)
    path = Path(job.path)
    if not path.is_file():
        raise HTTPException(404, f"job {job_id}'s image is no longer on this machine")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"ETag": f'"{job.sha256}"'} if job.sha256 else None
    return FileResponse(path, media_type=media_type, headers=headers)


JobId = Annotated[
    str,
    PathParam(
        description="A job's id.",
        json_schema_extra=api_schemas.keywords(api_schemas.ID_SCHEMA),
        examples=[api_schemas.JOB_EXAMPLE["job_id"]],
    ),
]
"""Documented, not checked: an id of another shape names no job (404)."""

BatchName = Annotated[
    str,
    PathParam(
        description="A batch's name.",
        json_schema_extra=api_schemas.keywords(api_schemas.ID_SCHEMA),
        examples=[api_schemas.JOB_EXAMPLE["batch"]],
    ),
]
"""Documented, not checked: a name of another shape names no batch (404)."""


def _add_job_routes(app: FastAPI, auth: list[Any], catalog: Catalog) -> None:
    @app.post(
        "/v1/jobs",
        tags=["jobs"],
        dependencies=auth,
        status_code=201,
        response_model=JobCreated,
        responses={
            200: {"model": JobCreated, "description": "That job_id exists already."},
            **AUTH,
            **CROSS_SITE,
            409: {
                "model": Invalid,
                "description": "Its name (file stem, any case) is another job's of the batch.",
            },
            413: {"model": Problem, "description": "Over FLUXQ_API_MAX_JOB_BYTES."},
            **WRONG_TYPE,
            **INVALID,
            **REDIS_DOWN,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "At most FLUXQ_API_MAX_JOB_BYTES (default 8 MiB), else 413.",
                "content": {"application/json": {"schema": api_schemas.job_body_schema(catalog)}},
            }
        },
    )
    async def post_job(request: Request, rt: RuntimeDep) -> JSONResponse:
        """Enqueue one job (checked like every other way in: 422 names every bad field).
        ``Content-Type: application/json`` only (415 otherwise)."""
        require_type(request, JSON_TYPES)
        raw = await request.body()  # at most FLUXQ_API_MAX_JOB_BYTES (BodyLimit)
        return await run_in_threadpool(job_from_body, rt, raw)

    @app.get(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        dependencies=auth,
        response_model=JobOut,
        responses={
            **AUTH,
            404: {"model": Problem, "description": "No such job (or it expired)."},
            **INVALID,
            503: {
                "model": Problem,
                "description": "Redis is unavailable, or MAX_LONG_POLLS long polls are held "
                "(then with Retry-After).",
                "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
            },
        },
    )
    async def get_job(
        job_id: JobId,
        request: Request,
        rt: RuntimeDep,
        wait_s: Annotated[
            float, Query(ge=0, description=f"Long poll, capped at {MAX_WAIT_S:g} s.")
        ] = 0,
    ) -> JobOut:
        """The job now; with ``wait_s``, as soon as it ends or ``wait_s`` passes (state may then
        still be running). At most MAX_LONG_POLLS (256) long polls at once: one more is 503
        with ``Retry-After``."""
        if wait_s <= 0:
            return await wait_for_job(rt, job_id, 0)
        state = request.app.state
        if state.long_polls >= MAX_LONG_POLLS:  # most are refused before, by LongPollGate
            raise long_poll_refusal(MAX_LONG_POLLS, LONG_POLL_RETRY_AFTER_S)
        state.long_polls += 1
        try:
            events = getattr(state, "job_events", None)
            return await wait_for_job(rt, job_id, min(wait_s, MAX_WAIT_S), events)
        finally:
            state.long_polls -= 1

    @app.get(
        "/v1/jobs/{job_id}/image",
        tags=["jobs"],
        dependencies=auth,
        response_class=FileResponse,
        responses={
            200: {"content": {"image/*": {}}, "description": "The image."},
            **AUTH,
            404: {"model": Problem, "description": "No such job, or it has no image (yet)."},
            **INVALID,
            **REDIS_DOWN,
        },
    )
    def get_image(job_id: JobId, rt: RuntimeDep) -> FileResponse:
        """The saved image, with ``ETag: "<sha256>"``; 404 until the job is done (and after its
        file is gone)."""
        return image_response(rt, job_id)

    @app.delete(
        "/v1/jobs/{job_id}",
        tags=["jobs"],
        dependencies=auth,
        response_model=JobCancelled,
        responses={
            **AUTH,
            **CROSS_SITE,
            404: {"model": Problem, "description": "No such job."},
            409: {"model": JobConflict, "description": "Admitted, sent or ended: not cancelled."},
            **INVALID,
            **REDIS_DOWN,
        },
    )
    def delete_job(job_id: JobId, rt: RuntimeDep) -> JSONResponse:
        """Cancel a queued job (200, also when already cancelled); 409 once it was admitted or
        sent (BFL has no cancel: it finishes and is saved) or ended otherwise."""

        state = cancel_job(rt, job_id)
        if state is None:
            raise _not_found(job_id)
        if state is not State.CANCELLED:
            return _problem(
                409, f"job {job_id} is {state.value}: only queued jobs cancel", state=state.value
            )
        return JSONResponse({"id": job_id, "state": state.value})


# --- batches -----------------------------------------------------------------------------------


def _in_query(problems: Iterable[FieldError]) -> list[dict[str, object]]:
    """A batch's bad parameters (``batch_problems``), as the query parameters they are here."""
    return [_field(["query", *e.loc], e.msg) for e in problems]


def submit_batch(
    rt: Runtime, path: Path, name: str, endpoint: str | None, priority: int, budget: float | None
) -> JSONResponse:
    """``fluxq batch submit`` for an uploaded file: every line checked, then all or nothing."""
    try:
        submitted = submit_file(
            rt, path, name=name, endpoint=endpoint, fmt="jsonl", priority=priority, budget=budget
        )
    except CancelledBatch as exc:
        return _problem(409, str(exc))
    except BadLines as exc:
        lines = [_field(["body", *e.loc], e.msg) for e in exc.errors]
        return _invalid(lines, lines=exc.scan.lines, invalid=exc.scan.error_count)
    except NoLines:
        return _invalid([_field(["body"], "no lines: send one JSON request per line")])
    except FileRefused as exc:
        return _invalid([_field(["body"], str(exc))])
    except BadParameters as exc:
        return _invalid(_in_query(exc.errors))
    created = BatchCreated(
        batch=name,
        added=submitted.added,
        already_there=submitted.present,
        conflicts=len(submitted.conflicts),
        lines=submitted.lines,
    )
    return JSONResponse(created.model_dump(), status_code=201)


def batch_out(rt: Runtime, status: BatchStatus) -> BatchOut:
    """The status with its key's slots and why it is blocked, as ``fluxq batch status --json``."""
    view = read_batch_view(rt.redis, rt.settings, status, now_s=time.time())
    return BatchOut.model_validate(status_json(status, view))


def _report_lines(rt: Runtime, name: str) -> Iterator[bytes]:

    for row in report_rows(rt, name):
        yield (json.dumps(asdict(row), ensure_ascii=False) + "\n").encode()


def _add_batch_routes(app: FastAPI, auth: list[Any], catalog: Catalog) -> None:
    @app.post(
        "/v1/batches",
        tags=["batches"],
        dependencies=auth,
        status_code=201,
        response_model=BatchCreated,
        responses={
            **AUTH,
            **CROSS_SITE,
            409: {"model": Problem, "description": "The batch was cancelled."},
            413: {"model": Problem, "description": "Over FLUXQ_API_MAX_BODY_BYTES."},
            **WRONG_TYPE,
            422: {"model": BatchInvalid, "description": "Bad parameters, or bad lines."},
            **REDIS_DOWN,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "One JSON object per line: a request with its endpoint, id and "
                "name (an id, a name, and a request without id, once per file). At most "
                "FLUXQ_API_MAX_BODY_BYTES (default 64 MiB), else 413.",
                "content": {
                    kind: {"schema": api_schemas.batch_body_schema(catalog)} for kind in BATCH_TYPES
                },
            }
        },
    )
    async def post_batch(
        request: Request,
        rt: RuntimeDep,
        # Checked by batch_problems (every bad one named at once): their schemas say its rules.
        name: Annotated[
            str,
            Query(
                description="The batch; job ids are <name>.<line id>.",
                examples=[api_schemas.JOB_EXAMPLE["batch"]],
                json_schema_extra=api_schemas.keywords(api_schemas.BATCH_NAME_SCHEMA),
            ),
        ],
        endpoint: Annotated[
            str | None,
            Query(
                description="The endpoint of lines naming none.",
                # A component: the parameter is declared once, the endpoints are the app's.
                json_schema_extra={"$ref": api_schemas.COMPONENTS + "Endpoint"},
            ),
        ] = None,
        priority: Annotated[
            int,
            Query(
                description="Higher runs sooner.",
                json_schema_extra={"minimum": 0, "maximum": MAX_PRIORITY},
            ),
        ] = DEFAULT_BATCH_PRIORITY,
        budget: Annotated[
            float | None,
            Query(description="Credits it may spend.", json_schema_extra={"exclusiveMinimum": 0}),
        ] = None,
    ) -> JSONResponse:
        """A JSONL file of requests as one batch: every line is checked first; one bad line and
        nothing is enqueued (422 naming the first 20 as ``["body", line, field]``).
        ``Content-Type: application/x-ndjson`` or ``application/jsonl`` only (415 otherwise)."""
        require_type(request, BATCH_TYPES)
        problems = _in_query(
            batch_problems(
                name, endpoint=endpoint, priority=priority, budget=budget, catalog=catalog
            )
        )
        if problems:
            return _invalid(problems)
        with tempfile.TemporaryDirectory(prefix="fluxq-api-") as tmp:
            path = Path(tmp) / "batch.jsonl"
            with path.open("wb") as out:  # streamed: never the whole body in memory
                async for chunk in request.stream():
                    await run_in_threadpool(out.write, chunk)  # a slow disk stalls no request
            return await run_in_threadpool(submit_batch, rt, path, name, endpoint, priority, budget)

    @app.get(
        "/v1/batches/{name}",
        tags=["batches"],
        dependencies=auth,
        response_model=BatchOut,
        responses={
            **AUTH,
            404: {"model": Problem, "description": "No such batch."},
            **INVALID,
            **REDIS_DOWN,
        },
    )
    def get_batch(name: BatchName, rt: RuntimeDep) -> BatchOut:
        """The batch's counters by state, credits, rate and ETA, its key's slots (at BFL apart
        from the slots held for doubtful POSTs) and why it is blocked, if it is (``fluxq batch
        status --json``)."""

        status = batch_status(rt, name)
        if status is None:
            raise HTTPException(404, f"no batch {name}")
        return batch_out(rt, status)

    @app.get(
        "/v1/batches/{name}/report",
        tags=["batches"],
        dependencies=auth,
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/x-ndjson": {"schema": api_schemas.report_body_schema()}},
                "description": "One JSON object per line of the batch.",
            },
            **AUTH,
            404: {"model": Problem, "description": "No such batch."},
            **INVALID,
            **REDIS_DOWN,
        },
    )
    def get_report(name: BatchName, rt: RuntimeDep) -> StreamingResponse:
        """One JSON line per line of the batch: line_id, job_id, state, file, seed, cost, reason."""

        if batch_status(rt, name) is None:
            raise HTTPException(404, f"no batch {name}")
        return StreamingResponse(_report_lines(rt, name), media_type="application/x-ndjson")

    @app.delete(
        "/v1/batches/{name}",
        tags=["batches"],
        dependencies=auth,
        response_model=BatchCancelled,
        responses={
            **AUTH,
            **CROSS_SITE,
            404: {"model": Problem, "description": "No such batch."},
            **INVALID,
            **REDIS_DOWN,
        },
    )
    def delete_batch(name: BatchName, rt: RuntimeDep) -> BatchCancelled:
        """Cancel every waiting line and queued job; jobs already sent finish and are saved."""

        if batch_status(rt, name) is None:
            raise HTTPException(404, f"no batch {name}")
        done = cancel_batch(rt, name)
        return BatchCancelled(batch=name, lines=done.lines, jobs=done.jobs)


# --- BFL's webhooks ----------------------------------------------------------------------------

WEBHOOK_RETRY_AFTER_S = 1
"""Retry-After on a webhook that came while the job's own POST was still out."""

WEBHOOK_THREADS = 1
"""Threads that run webhooks: one, so webhooks are handled one at a time, in order, as when they
ran on the event loop; and during a Redis hang they wait for it without taking the threads the
other routes need."""


class WebhookAnswer(BaseModel):
    """What fluxq did with a webhook BFL sent."""

    outcome: str = Field(description="settled, recovered or ignored")


def _add_bfl_webhook_route(app: FastAPI) -> None:
    @app.post(
        WEBHOOK_PATH + "/{job_id}/{token}",
        tags=["bfl"],
        response_model=WebhookAnswer,
        responses={
            401: {"model": Problem, "description": "Not BFL: a wrong token, secret or signature."},
            **CROSS_SITE,
            404: {"model": Problem, "description": "Webhook mode is off on this server."},
            413: {"model": Problem, "description": f"Over {MAX_WEBHOOK_BYTES:,} bytes."},
            **INVALID,
            503: {
                "model": Problem,
                "description": "Redis is unavailable, or the job's POST is still out (then "
                "with Retry-After: retry soon).",
                "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
            },
        },
    )
    async def bfl_webhook(job_id: JobId, token: str, request: Request, rt: RuntimeDep) -> Any:
        """BFL's call when a task ends (webhook mode): the job moves on at once, no poll.

        Not behind the bearer token (BFL cannot send it): the URL's token and the key's webhook
        secret (``X-Webhook-Secret``, or ``X-BFL-Signature`` over the body) prove the sender.
        """
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_WEBHOOK_BYTES:
            raise HTTPException(413, f"a webhook body is at most {MAX_WEBHOOK_BYTES:,} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_WEBHOOK_BYTES:
                raise HTTPException(413, f"a webhook body is at most {MAX_WEBHOOK_BYTES:,} bytes")
        # In a thread: a Redis that hangs must not stall the event loop (every other request)
        # for FLUXQ_REDIS_TIMEOUT_S. One at a time (WEBHOOK_THREADS); the hop costs some latency.
        answer = await anyio.to_thread.run_sync(
            receive, rt, job_id, token, request.headers, raw,
            limiter=request.app.state.webhook_threads,
        )  # fmt: skip
        if answer is Answer.FORGED:
            raise HTTPException(401, "not a webhook of this server")
        if answer is Answer.DISABLED:
            raise HTTPException(404, "webhook mode is off (FLUXQ_BFL_WEBHOOK_BASE_URL is unset)")
        if answer is Answer.RETRY:
            raise HTTPException(
                503,
                "the job's submit is still in flight",
                {"Retry-After": str(WEBHOOK_RETRY_AFTER_S)},
            )
        return WebhookAnswer(outcome=answer.value)


def openapi_json() -> str:
    """The OpenAPI document of fixed settings (no .env, no key), so the output is the same on
    every machine: the content of ``docs/openapi.json``."""
    app = create_app(load_settings(_env_file=None, bfl_api_key=None, endpoints_file=None))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(openapi_json())
