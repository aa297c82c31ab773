"""The BFL HTTP client: submit, get_result, download and credits over an injectable httpx transport.

HTTP status codes and httpx errors become fluxq's exceptions in exactly one place each. Any text
from the server or from httpx is redacted with the settings' secrets before it goes into a message:
a 403 or 422 may echo the key, and httpx may quote a header it refused.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, SecretStr

from fluxq.config.catalog import NOT_UTF8, get_endpoint, not_utf8_at, request_to_json
from fluxq.config.endpoint_spec import ENDPOINT_PATTERN
from fluxq.config.errors import (
    DisallowedURL,
    DownloadFailed,
    FieldError,
    FluxqError,
    InvalidRequest,
    NotAuthorised,
    NotSent,
    OutcomeUnknown,
    OutOfCredits,
    RateLimited,
    ReadFailed,
    ServerError,
    UnexpectedResponse,
)
from fluxq.config.redact import Secrets, mentions_secret, redact, secrets_of
from fluxq.config.settings import Settings
from fluxq.workers.bfl.responses import (
    Downloaded,
    Result,
    Status,
    Submitted,
    parse_result,
    parse_submitted,
)
from fluxq.workers.bfl.webhooks import key_secret
from fluxq.workers.state.keys import key_label

USER_AGENT = "fluxq/0.1"

NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,  # the proxy refused the tunnel: nothing reached BFL
    httpx.LocalProtocolError,  # httpx refused our own request (an illegal header value)
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)
"""httpx errors raised before a request left this machine: resending is safe."""


def _detail_text(response: httpx.Response, secrets: Secrets = ()) -> str:
    try:
        body = response.json()
    except ValueError:
        return redact(response.text, secrets, max_chars=200)
    detail = body.get("detail") if isinstance(body, dict) else body
    return redact(str(detail), secrets, max_chars=300)


def _loc_part(part: object, secrets: Secrets) -> str | int:
    if isinstance(part, int) and not isinstance(part, bool):
        return part
    return redact(str(part), secrets, max_chars=100)


def _field_errors(response: httpx.Response, secrets: Secrets = ()) -> list[FieldError]:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return []
    if not isinstance(detail, list):
        return []
    errors = []
    for item in detail:
        if isinstance(item, dict):
            loc = item.get("loc")
            loc_tuple = (
                tuple(_loc_part(p, secrets) for p in loc) if isinstance(loc, list) else ("body",)
            )
            msg = redact(str(item.get("msg", "invalid")), secrets, max_chars=300)
            errors.append(FieldError(loc=loc_tuple, msg=msg))
    return errors


def _content_length(response: httpx.Response) -> int | None:
    """The declared body size, or None when absent or unreadable (the stream is counted anyway)."""
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def retry_after_s(value: str | None, *, now_s: float | None = None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now)


def raise_for_status(response: httpx.Response, *, secrets: Secrets = ()) -> None:
    """Translate a BFL HTTP status into fluxq's exception tree (the only place that does).

    The server's text is redacted with ``secrets`` before it goes into the message.
    """
    code = response.status_code
    if 200 <= code < 300:
        return
    secrets = tuple(secrets)
    what = f"BFL answered {code} to {response.request.method} {response.request.url.path}"
    detail = _detail_text(response, secrets)
    if code in (400, 422):
        raise InvalidRequest(
            what,
            errors=_field_errors(response, secrets) or [FieldError(loc=("body",), msg=detail)],
        )
    if code in (401, 403):
        raise NotAuthorised(f"{what}: {detail} (check BFL_API_KEY)")
    if code == 402:
        raise OutOfCredits(f"{what}: out of credits: {detail}")
    if code == 429:
        raise RateLimited(
            f"{what}: active-task cap reached: {detail}",
            retry_after_s=retry_after_s(response.headers.get("retry-after")),
        )
    if code >= 500:
        raise ServerError(
            f"{what}: {detail}",
            status_code=code,
            retry_after_s=retry_after_s(response.headers.get("retry-after")),
        )
    raise UnexpectedResponse(f"{what}: {detail}")


@contextmanager
def translate_transport_errors(
    what: str, *, read_only: bool, secrets: Secrets = ()
) -> Iterator[None]:
    """Turn httpx transport errors into NotSent, ReadFailed or OutcomeUnknown (the only place).

    The httpx error's text is redacted with ``secrets``; when it did quote one, the httpx error is
    not chained either, so no traceback repeats it.
    """
    try:
        yield
    except NOT_SENT_ERRORS as exc:
        shown, cause = _shown(exc, secrets)
        raise NotSent(f"{what}: not sent: {type(exc).__name__}: {shown}") from cause
    except httpx.TransportError as exc:
        # The request may have reached BFL: a submit may have created (and billed) a task.
        shown, cause = _shown(exc, secrets)
        text = f"{what}: no answer after sending: {type(exc).__name__}: {shown}"
        if read_only:
            raise ReadFailed(text) from cause
        raise OutcomeUnknown(text) from cause


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as the UTF-8 JSON BFL receives; InvalidRequest names a field that cannot be
    encoded (a lone surrogate from a careless export), before anything is sent."""
    try:
        return json.dumps(dict(body), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        where = not_utf8_at(body)
        field = ("body", *where) if where is not None else ("body",)
        msg = NOT_UTF8 if where is not None else f"cannot be encoded: {type(exc).__name__}"
        raise InvalidRequest(
            "the request cannot be sent as UTF-8 JSON", errors=[FieldError(loc=field, msg=msg)]
        ) from None


def _shown(exc: Exception, secrets: Secrets) -> tuple[str, Exception | None]:
    """An httpx error's redacted text, and the error itself unless it quotes a secret."""
    secrets = tuple(secrets)
    text = str(exc)
    return redact(text, secrets), None if mentions_secret(text, secrets) else exc


@dataclass(frozen=True)
class _Limit:
    """A download's size bound and the setting that sets it (named when a body passes it)."""

    max_bytes: int
    name: str


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: ``Set-Cookie`` is never parsed, ``Cookie`` never sent."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class CookielessClient(httpx.Client):
    """An httpx client with no cookie jar. BFL's API and delivery hosts need no cookies, and
    none a host sets should ride along to another. It also saves httpx's parse of every
    response's cookies, about 5 % of a worker's CPU when polling (py-spy, 1 s latencies)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("this client keeps no cookies")


_NO_COOKIES = _NoCookies()


class BFLClient:
    """A synchronous BFL client; one per worker thread or process, closed when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._secrets = secrets_of(settings)
        if settings.bfl_webhook_secret is not None:
            # The key's webhook secret goes out in every POST body: a server echoing it is redacted.
            derived = key_secret(settings.bfl_webhook_secret, key_label(settings.bfl_api_key))
            self._secrets = (*self._secrets, SecretStr(derived))
        self._clock = clock  # monotonic seconds: the download deadline is measured on it
        headers = {"user-agent": USER_AGENT, "accept": "application/json"}
        timeout = httpx.Timeout(
            connect=settings.http_connect_timeout_s,
            read=settings.http_read_timeout_s,
            write=settings.http_write_timeout_s,
            pool=settings.http_pool_timeout_s,
        )
        # Reused connections expire before the server's idle timeout would close them under a
        # request (the keep-alive race): a POST lost that way is an uncertain job.
        limits = httpx.Limits(keepalive_expiry=settings.http_keepalive_s)
        self._http = CookielessClient(
            transport=transport,
            headers=headers,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        key = "set" if self._settings.bfl_api_key else "unset"
        return f"BFLClient(base_url={self._settings.bfl_base_url!r}, api_key={key})"

    def __enter__(self) -> BFLClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _auth(self) -> dict[str, str]:
        # The key goes only to BFL API calls, never to delivery hosts.
        key = self._settings.bfl_api_key
        return {"x-key": key.get_secret_value()} if key else {}

    @property
    def secrets(self) -> Secrets:
        """What this client redacts from outside text: the settings' secrets and derived ones."""
        return self._secrets

    def _redact(self, text: str, *, max_chars: int = 200) -> str:
        return redact(text, self._secrets, max_chars=max_chars)

    def _allowed(self, url: object) -> bool:
        """The settings allow ``url``, and httpx would send the request to that same host."""
        if not isinstance(url, str) or not self._settings.url_allowed(url):
            return False
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            return False
        return parsed.host == urlsplit(url).hostname and self._settings.url_allowed(str(parsed))

    def _check_allowed(self, url: object, what: str) -> None:
        """Raise DisallowedURL unless ``url`` may be fetched; never raises anything else."""
        if self._allowed(url):
            return
        raise DisallowedURL(
            f"{what} {self._describe(url)} is not allowed (FLUXQ_ALLOWED_URLS: "
            f"{','.join(self._settings.allowed_urls)})"
        )

    def _describe(self, url: object) -> str:
        """The host of a refused URL (or its start), for a message; never raises."""
        if not isinstance(url, str):
            return f"(a {type(url).__name__}, not a URL string)"
        try:
            host = urlsplit(url).hostname or url
        except ValueError:
            host = url
        return repr(self._redact(host, max_chars=80))

    def _json(self, response: httpx.Response) -> Any:
        raise_for_status(response, secrets=self._secrets)
        try:
            return response.json()
        except ValueError as exc:
            text = self._redact(response.text)
            raise UnexpectedResponse(f"BFL answered non-JSON: {text}") from exc

    def submit(self, endpoint: str, request: BaseModel) -> Submitted:
        """POST a validated request; the response carries the id and the polling URL."""
        get_endpoint(endpoint, catalog=self._settings.catalog)
        return self.submit_json(endpoint, request_to_json(request))

    def submit_json(self, endpoint: str, body: Mapping[str, Any]) -> Submitted:
        """POST a raw JSON body without local validation.

        The body is encoded before anything is sent: a body that cannot be encoded is an
        ``InvalidRequest`` (never an unknown outcome). A 2xx that cannot be read is an
        ``OutcomeUnknown``: BFL accepted something, so a task may exist. The endpoint goes
        into the URL as it is, ``/`` and all (``/v1/flux-tools/erase-v1``), so it must be an
        endpoint path (``ENDPOINT_PATTERN``: no ``..``, no query): else InvalidRequest.
        """
        if not ENDPOINT_PATTERN.fullmatch(endpoint):
            error = FieldError(("endpoint",), f"{endpoint!r} is not an endpoint path")
            raise InvalidRequest(f"POST /v1/{endpoint!r} refused", errors=[error])
        url = f"{self._settings.bfl_base_url}/v1/{endpoint}"
        content = encode_body(body)
        what = f"POST /v1/{endpoint}"
        with translate_transport_errors(what, read_only=False, secrets=self._secrets):
            headers = {**self._auth(), "content-type": "application/json"}
            response = self._http.post(url, content=content, headers=headers)
        try:
            data = self._json(response)
            fallback = f"{self._settings.bfl_base_url}/v1/get_result"
            return parse_submitted(data, fallback_polling_url=fallback, secrets=self._secrets)
        except UnexpectedResponse as exc:
            if response.is_success:
                raise OutcomeUnknown(f"{what}: answered {response.status_code}: {exc}") from None
            raise

    def get_result(self, polling_url: str) -> Result:
        """GET the polling URL exactly as BFL gave it, if its host is allowed."""
        self._check_allowed(polling_url, "polling URL host")
        with translate_transport_errors("GET polling_url", read_only=True, secrets=self._secrets):
            response = self._http.get(polling_url, headers=self._auth())
        return parse_result(self._json(response), secrets=self._secrets)

    def get_result_by_id(self, task_id: str) -> Result:
        """GET /v1/get_result?id= on the configured base URL.

        BFL's documented endpoint, but a task may live on another cluster host: fluxq itself
        always follows the submit's polling_url (``get_result``), including to re-fetch a sample.
        """
        url = f"{self._settings.bfl_base_url}/v1/get_result"
        with translate_transport_errors(
            "GET /v1/get_result", read_only=True, secrets=self._secrets
        ):
            response = self._http.get(url, params={"id": task_id}, headers=self._auth())
        return parse_result(self._json(response), secrets=self._secrets)

    def credits(self) -> float:
        """The account's remaining credits."""
        url = f"{self._settings.bfl_base_url}/v1/credits"
        with translate_transport_errors("GET /v1/credits", read_only=True, secrets=self._secrets):
            response = self._http.get(url, headers=self._auth())
        data = self._json(response)
        value = data.get("credits") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UnexpectedResponse(
                f"credits answered without a number: {self._redact(str(data))}"
            )
        return float(value)

    def quote(
        self, model: str, width: int, height: int, inputs: Sequence[tuple[int, int]] = ()
    ) -> float | None:
        """BFL's own price in credits for one ``model`` image of ``width`` x ``height`` from
        ``inputs`` (each an input image's width and height): ``POST /v1/pricing``, as BFL's SDK
        asks it. None when the deployment has no pricing endpoint (404); it quotes FLUX.2 only."""
        url = f"{self._settings.bfl_base_url}/v1/pricing"
        body = {
            "model": model,
            "width": width,
            "height": height,
            "input_images": [{"width": w, "height": h} for w, h in inputs],
        }
        with translate_transport_errors("POST /v1/pricing", read_only=True, secrets=self._secrets):
            headers = {**self._auth(), "content-type": "application/json"}
            response = self._http.post(url, content=encode_body(body), headers=headers)
        if response.status_code == 404:
            return None
        data = self._json(response)
        value = data.get("cost") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise UnexpectedResponse(f"pricing answered without a cost: {self._redact(str(data))}")
        return float(value)

    def download(
        self,
        url: str,
        path: Path,
        *,
        max_bytes: int | None = None,
        limit_name: str = "FLUXQ_DOWNLOAD_MAX_BYTES",
    ) -> Downloaded:
        """Stream a signed delivery URL into ``path`` and fsync it; removes ``path`` on failure.

        At most ``max_bytes`` are read (default FLUXQ_DOWNLOAD_MAX_BYTES; the setting named
        ``limit_name``; a larger body is a permanent DownloadFailed) and one attempt may take
        FLUXQ_DOWNLOAD_DEADLINE_S (checked between chunks; ReadFailed).
        """
        self._check_allowed(url, "download host")
        if max_bytes is None:
            limit = _Limit(self._settings.download_max_bytes, "FLUXQ_DOWNLOAD_MAX_BYTES")
        else:
            limit = _Limit(max_bytes, limit_name)
        try:
            return self._stream_to(url, path, limit)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _too_large(self, what: str, status_code: int, limit: _Limit) -> DownloadFailed:
        return DownloadFailed(
            f"delivery URL {what}: larger than {limit.name} ({limit.max_bytes} bytes)",
            status_code=status_code,
        )

    def _check_deadline(self, deadline: float, size: int) -> None:
        if self._clock() > deadline:
            raise ReadFailed(
                f"download took longer than {self._settings.download_deadline_s:g} s "
                f"(FLUXQ_DOWNLOAD_DEADLINE_S); gave up after {size} bytes"
            )

    def _stream_to(self, url: str, path: Path, bound: _Limit) -> Downloaded:
        digest = hashlib.sha256()
        size = 0
        limit = bound.max_bytes
        deadline = self._clock() + self._settings.download_deadline_s
        with (
            translate_transport_errors("GET delivery URL", read_only=True, secrets=self._secrets),
            self._http.stream("GET", url) as response,
        ):
            code = response.status_code
            if code != 200:
                raise DownloadFailed(
                    f"delivery URL answered {code}"
                    + (" (signature expired?)" if code in (403, 404) else ""),
                    status_code=code,
                )
            declared = _content_length(response)
            if declared is not None and declared > limit:
                raise self._too_large(f"declared {declared} bytes", code, bound)
            self._check_deadline(deadline, size)
            with path.open("wb") as out:
                # Chunks as they arrive (no re-chunking), so a trickling host meets the deadline.
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large(f"sent more than {limit} bytes", code, bound)
                    out.write(chunk)
                    digest.update(chunk)
                    self._check_deadline(deadline, size)
                out.flush()
                os.fsync(out.fileno())
            content_type = response.headers.get("content-type")
        if size == 0:
            raise DownloadFailed("delivery URL answered an empty body", status_code=200)
        return Downloaded(
            path=path, size_bytes=size, sha256=digest.hexdigest(), content_type=content_type
        )


__all__ = [
    "BFLClient",
    "Downloaded",
    "FluxqError",
    "Result",
    "Status",
    "Submitted",
    "raise_for_status",
    "retry_after_s",
]
