"""What the BFL API answers, as typed values: the closed status enum and the parsed responses.

Every BFL status string is parsed here and only here; an unknown string is terminal, never Pending.
Text from BFL that can end up in a message (an unreadable body, error details, moderation reasons)
is redacted with the secrets the caller passes, since a server may echo the key it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from fluxq.config.errors import UnexpectedResponse
from fluxq.config.redact import Secrets, redact
from fluxq.config.video import result_draft_caches, result_samples


class Status(StrEnum):
    """BFL task statuses with their exact strings; UNKNOWN stands for any string not listed."""

    PENDING = "Pending"
    READY = "Ready"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    ERROR = "Error"
    TASK_NOT_FOUND = "Task not found"
    UNKNOWN = "Unknown"

    @property
    def terminal(self) -> bool:
        """Everything but Pending ends polling: an unknown status must never poll forever."""
        return self is not Status.PENDING

    @classmethod
    def parse(cls, raw: object) -> Status:
        """Map BFL's string to a member; anything unrecognised (``"Failed"``, None) is UNKNOWN."""
        for member in cls:
            if member is not cls.UNKNOWN and member.value == raw:
                return member
        return cls.UNKNOWN


@dataclass(frozen=True)
class Submitted:
    """BFL's answer to a generation POST."""

    id: str
    polling_url: str
    cost: float | None
    input_mp: float | None
    output_mp: float | None


@dataclass(frozen=True)
class Result:
    """One ``get_result`` answer."""

    id: str
    status: Status
    raw_status: str
    sample_url: str | None
    seed: int | None
    prompt: str | None
    progress: float | None
    details: dict[str, Any] | None
    moderation_reasons: tuple[str, ...]
    samples: tuple[str, ...] = ()
    """Every sample URL (a draft batch's several; shape UNCONFIRMED: ``fluxq.config.video``)."""
    draft_caches: tuple[str, ...] = ()
    """A draft's cache URLs, one per sample (shape UNCONFIRMED: ``fluxq.config.video``)."""


@dataclass(frozen=True)
class Downloaded:
    """A file downloaded from a delivery URL and fsynced at ``path``."""

    path: Path
    size_bytes: int
    sha256: str
    content_type: str | None


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _usable_url(url: str) -> bool:
    """True when ``url`` is an http(s) URL with a host that both urllib and httpx can parse."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_submitted(body: object, *, fallback_polling_url: str, secrets: Secrets = ()) -> Submitted:
    """Parse a submit response; a webhook-style answer without polling_url gets the fallback.

    A polling_url that is there but is not a usable URL string is an unexpected answer.
    """
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        shown = redact(str(body), secrets, max_chars=200)
        raise UnexpectedResponse(f"submit answered without a task id: {shown}")
    task_id: str = body["id"]
    polling_url = body.get("polling_url")
    if polling_url is None or polling_url == "":
        polling_url = f"{fallback_polling_url}?id={task_id}"
    elif not isinstance(polling_url, str) or not _usable_url(polling_url):
        shown = redact(repr(polling_url), secrets, max_chars=200)
        raise UnexpectedResponse(f"submit answered an unusable polling_url: {shown}")
    return Submitted(
        id=task_id,
        polling_url=polling_url,
        cost=_number_or_none(body.get("cost")),
        input_mp=_number_or_none(body.get("input_mp")),
        output_mp=_number_or_none(body.get("output_mp")),
    )


def _moderation_reasons(details: dict[str, Any] | None) -> tuple[str, ...]:
    if not details:
        return ()
    reasons = details.get("Moderation Reasons")
    if isinstance(reasons, list):
        return tuple(str(r) for r in reasons)
    return ()


def _scrub(value: Any, secrets: Secrets) -> Any:
    """``value`` (decoded JSON) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def parse_result(body: object, *, secrets: Secrets = ()) -> Result:
    """Parse a get_result response into a Result; its details and raw status are redacted."""
    if not isinstance(body, dict):
        shown = redact(str(body), secrets, max_chars=200)
        raise UnexpectedResponse(f"get_result answered a non-object: {shown}")
    secrets = tuple(secrets)
    raw_status = body.get("status")
    raw_result = body.get("result")
    result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else {}
    details = _scrub(body["details"], secrets) if isinstance(body.get("details"), dict) else None
    sample = result.get("sample")
    seed = result.get("seed")
    prompt = result.get("prompt")
    return Result(
        id=str(body.get("id", "")),
        status=Status.parse(raw_status),
        raw_status=redact(str(raw_status), secrets),
        sample_url=sample if isinstance(sample, str) else None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        prompt=prompt if isinstance(prompt, str) else None,
        progress=_number_or_none(body.get("progress")),
        details=details,
        moderation_reasons=_moderation_reasons(details),
        samples=result_samples(result),
        draft_caches=result_draft_caches(result),
    )
