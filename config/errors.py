"""The one exception tree of fluxq, grouped by what the caller does next.

It lives in ``config`` because ``config`` is the bottom layer that every other package imports.

    FluxqError                      root: catch this to catch anything fluxq raises on purpose
    ├── ConfigError                 stop: a setting is wrong (names every bad variable)
    ├── RetryLater                  try the same thing again later; never a job failure by itself
    │   ├── RateLimited             429: the active-task cap is reached (retry_after_s when sent)
    │   ├── ServerError             5xx (503: refused, nothing created; others: unknown)
    │   ├── NotSent                 transport failure before the request left: safe to resend
    │   └── ReadFailed              a read-only call broke off: resending is harmless
    ├── OutcomeUnknown              a request was sent but no answer came (timeout, dropped
    │                               connection): a submit may have created and billed a task
    ├── JobFailed                   this job cannot succeed; record the reason and move on
    │   ├── InvalidRequest          400/422 or our own validation: names every bad field
    │   ├── DisallowedURL           a polling or download URL outside the allowed hosts
    │   ├── DownloadFailed          the signed URL answered an error (expired, 403/404)
    │   └── UnexpectedResponse      BFL answered something we cannot parse
    ├── WebhookRefused              fluxq's own webhook must not be sent (bad URL, internal
    │                               address): recorded on the job, never retried
    └── StopAndAlert                stop submitting for this key; a person must look
        ├── OutOfCredits            402
        └── NotAuthorised           401/403

Messages never contain an API key or a webhook secret: those are ``SecretStr`` everywhere and no
error is built from a request's headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FluxqError(Exception):
    """Raised for every failure fluxq reports on purpose; the root of the tree."""


class ConfigError(FluxqError):
    """Raised when settings are invalid; the message names every bad variable and why."""


class RetryLater(FluxqError):
    """Raised when the same call may succeed later; callers back off and retry."""


class RateLimited(RetryLater):
    """Raised on HTTP 429: the account's active-task cap is reached."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerError(RetryLater):
    """Raised on HTTP 5xx: BFL failed or is temporarily unavailable."""

    def __init__(
        self, message: str, *, status_code: int, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class NotSent(RetryLater):
    """Raised when the transport failed before the request was sent (connect error, DNS, pool)."""


class ReadFailed(RetryLater):
    """Raised when a read-only call (get_result, credits, download) broke off after it was sent."""


class OutcomeUnknown(FluxqError):
    """Raised when a request was sent but no response arrived; a task may exist and be billed."""


class JobFailed(FluxqError):
    """Raised when this job cannot succeed; the message is the reason a person reads."""


@dataclass(frozen=True)
class FieldError:
    """One bad field: where it is (``("body", "width")``) and what is wrong with it."""

    loc: tuple[str | int, ...]
    msg: str

    @property
    def field(self) -> str:
        """The dotted field name without the leading ``body``."""
        parts = [str(p) for p in self.loc if p != "body"]
        return ".".join(parts) or "<request>"

    def __str__(self) -> str:
        return f"{self.field}: {self.msg}"


class InvalidRequest(JobFailed):
    """Raised when a request is invalid (ours or BFL's 400/422); names every bad field."""

    def __init__(self, message: str, *, errors: Sequence[FieldError] = ()) -> None:
        self.errors = tuple(errors)
        detail = "; ".join(str(e) for e in self.errors)
        super().__init__(f"{message}: {detail}" if detail else message)

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the bad fields, in order."""
        return tuple(e.field for e in self.errors)


class DisallowedURL(JobFailed):
    """Raised when a polling or delivery URL's scheme or host is not in the allowed list."""


class DownloadFailed(JobFailed):
    """Raised when a signed delivery URL answers an error (expired: 403/404) or breaks off."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def expired(self) -> bool:
        """True when the URL most likely outlived its 10-minute signature."""
        return self.status_code in (403, 404, 410)


class UnexpectedResponse(JobFailed):
    """Raised when BFL answers with a body or status we cannot interpret."""


class StopAndAlert(FluxqError):
    """Raised when submitting for this key must stop until a person (or time) fixes it."""


class OutOfCredits(StopAndAlert):
    """Raised on HTTP 402: the account has no credits left."""


class NotAuthorised(StopAndAlert):
    """Raised on HTTP 401/403: the key is missing, wrong or lacks permission."""


class WebhookRefused(FluxqError):
    """Raised when a webhook must not be sent: a bad URL or an internal destination."""
