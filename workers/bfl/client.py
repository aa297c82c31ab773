"""The BFL HTTP client: submit, get_result, download and credits over an injectable httpx transport.

HTTP status codes and httpx errors become fluxq's exceptions in exactly one place each.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import BaseModel

from config.catalog import get_endpoint, request_to_json
from config.errors import (
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
from config.settings import Settings
from workers.bfl.responses import (
    Downloaded,
    Result,
    Status,
    Submitted,
    parse_result,
    parse_submitted,
)

USER_AGENT = "fluxq/0.1"
DOWNLOAD_CHUNK_BYTES = 64 * 1024


def _detail_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else body
    return str(detail)[:300]


def _field_errors(response: httpx.Response) -> list[FieldError]:
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
            loc_tuple = tuple(loc) if isinstance(loc, list) else ("body",)
            errors.append(FieldError(loc=loc_tuple, msg=str(item.get("msg", "invalid"))))
    return errors


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


def raise_for_status(response: httpx.Response) -> None:
    """Translate a BFL HTTP status into fluxq's exception tree (the only place that does)."""
    code = response.status_code
    if 200 <= code < 300:
        return
    what = f"BFL answered {code} to {response.request.method} {response.request.url.path}"
    if code in (400, 422):
        raise InvalidRequest(
            what,
            errors=_field_errors(response)
            or [FieldError(loc=("body",), msg=_detail_text(response))],
        )
    if code in (401, 403):
        raise NotAuthorised(f"{what}: {_detail_text(response)} (check BFL_API_KEY)")
    if code == 402:
        raise OutOfCredits(f"{what}: out of credits: {_detail_text(response)}")
    if code == 429:
        raise RateLimited(
            f"{what}: active-task cap reached: {_detail_text(response)}",
            retry_after_s=retry_after_s(response.headers.get("retry-after")),
        )
    if code >= 500:
        raise ServerError(f"{what}: {_detail_text(response)}", status_code=code)
    raise UnexpectedResponse(f"{what}: {_detail_text(response)}")


@contextmanager
def translate_transport_errors(what: str, *, read_only: bool) -> Iterator[None]:
    """Turn httpx transport errors into NotSent, ReadFailed or OutcomeUnknown (the only place)."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise NotSent(f"{what}: not sent: {type(exc).__name__}: {exc}") from exc
    except httpx.TransportError as exc:
        # The request may have reached BFL: a submit may have created (and billed) a task.
        text = f"{what}: no answer after sending: {type(exc).__name__}: {exc}"
        if read_only:
            raise ReadFailed(text) from exc
        raise OutcomeUnknown(text) from exc


class BFLClient:
    """A synchronous BFL client; one per worker thread or process, closed when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        headers = {"user-agent": USER_AGENT, "accept": "application/json"}
        timeout = httpx.Timeout(
            connect=settings.http_connect_timeout_s,
            read=settings.http_read_timeout_s,
            write=settings.http_write_timeout_s,
            pool=settings.http_pool_timeout_s,
        )
        self._http = httpx.Client(
            transport=transport, headers=headers, timeout=timeout, follow_redirects=False
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

    def _check_allowed(self, url: str, what: str) -> None:
        if not self._settings.url_allowed(url):
            host = httpx.URL(url).host if url.startswith(("http://", "https://")) else url[:80]
            raise DisallowedURL(
                f"{what} {host!r} is not allowed (FLUXQ_ALLOWED_URLS: "
                f"{','.join(self._settings.allowed_urls)})"
            )

    def _json(self, response: httpx.Response) -> Any:
        raise_for_status(response)
        try:
            return response.json()
        except ValueError as exc:
            raise UnexpectedResponse(f"BFL answered non-JSON: {response.text[:200]}") from exc

    def submit(self, endpoint: str, request: BaseModel) -> Submitted:
        """POST a validated request; the response carries the id and the polling URL."""
        get_endpoint(endpoint)
        return self.submit_json(endpoint, request_to_json(request))

    def submit_json(self, endpoint: str, body: Mapping[str, Any]) -> Submitted:
        """POST a raw JSON body without local validation."""
        url = f"{self._settings.bfl_base_url}/v1/{endpoint}"
        with translate_transport_errors(f"POST /v1/{endpoint}", read_only=False):
            response = self._http.post(url, json=dict(body), headers=self._auth())
        data = self._json(response)
        fallback = f"{self._settings.bfl_base_url}/v1/get_result"
        return parse_submitted(data, fallback_polling_url=fallback)

    def get_result(self, polling_url: str) -> Result:
        """GET the polling URL exactly as BFL gave it, if its host is allowed."""
        self._check_allowed(polling_url, "polling URL host")
        with translate_transport_errors("GET polling_url", read_only=True):
            response = self._http.get(polling_url, headers=self._auth())
        return parse_result(self._json(response))

    def get_result_by_id(self, task_id: str) -> Result:
        """GET /v1/get_result?id= on the configured base URL.

        BFL's documented endpoint, but a task may live on another cluster host: fluxq itself
        always follows the submit's polling_url (``get_result``), including to re-fetch a sample.
        """
        url = f"{self._settings.bfl_base_url}/v1/get_result"
        with translate_transport_errors("GET /v1/get_result", read_only=True):
            response = self._http.get(url, params={"id": task_id}, headers=self._auth())
        return parse_result(self._json(response))

    def credits(self) -> float:
        """The account's remaining credits."""
        url = f"{self._settings.bfl_base_url}/v1/credits"
        with translate_transport_errors("GET /v1/credits", read_only=True):
            response = self._http.get(url, headers=self._auth())
        data = self._json(response)
        value = data.get("credits") if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UnexpectedResponse(f"credits answered without a number: {str(data)[:200]}")
        return float(value)

    def download(self, url: str, path: Path) -> Downloaded:
        """Stream a signed delivery URL into ``path`` and fsync it; removes ``path`` on failure."""
        self._check_allowed(url, "download host")
        try:
            return self._stream_to(url, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _stream_to(self, url: str, path: Path) -> Downloaded:
        digest = hashlib.sha256()
        size = 0
        with (
            translate_transport_errors("GET delivery URL", read_only=True),
            self._http.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise DownloadFailed(
                    f"delivery URL answered {response.status_code}"
                    + (" (signature expired?)" if response.status_code in (403, 404) else ""),
                    status_code=response.status_code,
                )
            with path.open("wb") as out:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
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
