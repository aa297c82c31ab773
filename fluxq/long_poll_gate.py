"""Long polls over the bound refused before FastAPI's stack, at a seventh of the route's cost.

``GET /v1/jobs/{id}?wait_s=…`` holds at most MAX_LONG_POLLS requests (``fluxq/api.py``); one
more is 503 with ``Retry-After``. Refusing is shedding load, so it must be cheap: 2,000 long polls
arriving at once are 1,744 refusals, and through routing, dependencies and the exception
handler each cost about 110 µs of the event loop (14 µs here). The loop runs its ready
callbacks in turn, so ``/healthz`` waited for all of them (hundreds of ms on 2 cores).

The gate answers only what the route would answer, byte for byte (``refusal``): a GET of that
path with one plain positive ``wait_s``, a valid token when one is set, while the bound is
reached. Anything else, however odd, goes on to the route, which keeps the bound itself.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

_JOB_PATH = re.compile(r"/v1/jobs/[^/]+")
"""The route ``/v1/jobs/{job_id}`` (a path parameter matches one segment)."""

_PLAIN_WAIT = re.compile(r"(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,9})?")
"""A ``wait_s`` every float parser reads alike (no sign, exponent, underscore, blank or leading
zero)."""


def refusal(limit: int, retry_after_s: int) -> HTTPException:
    """The 503 of a long poll over ``limit`` (raised by the route, sent by the gate)."""
    return HTTPException(
        503,
        f"{limit} long polls are held already: retry, or ask without wait_s",
        {"Retry-After": str(retry_after_s)},
    )


class LongPollGate:
    """Sends ``refusal`` for a long poll while ``state.long_polls`` is at ``limit()``, before
    the app (see the module docstring). Placed inside the Host and body checks, so those come
    first as they do for the route."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        state: object,
        limit: Callable[[], int],
        retry_after_s: int,
        token: SecretStr | None,
    ) -> None:
        self.app = app
        self.state = state
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.token = token.get_secret_value().encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._refused(scope):
            exc = refusal(self.limit(), self.retry_after_s)
            response = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refused(self, scope: Scope) -> bool:
        return (
            getattr(self.state, "long_polls", 0) >= self.limit()
            and scope["method"] == "GET"
            and not scope.get("root_path")
            and _JOB_PATH.fullmatch(scope["path"]) is not None
            and waits(scope["query_string"])
            and self._authorized(scope["headers"])
        )

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """As the route's HTTPBearer and token check find it: the first Authorization header,
        read as Starlette reads it (latin-1), then compared as ``_auth`` compares."""
        if self.token is None:
            return True
        given = next((value for name, value in headers if name == b"authorization"), b"")
        scheme, _, credentials = given.decode("latin-1").partition(" ")
        credentials = credentials.strip()
        return (
            scheme.lower() == "bearer"
            and credentials != ""
            and hmac.compare_digest(credentials.encode(), self.token)
        )


def waits(query: bytes) -> bool:
    """True when ``query`` asks, beyond doubt, for a long poll: one plain ``wait_s`` over 0."""
    values = [
        value
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if name == "wait_s"
    ]
    return (
        len(values) == 1 and _PLAIN_WAIT.fullmatch(values[0]) is not None and float(values[0]) > 0
    )
