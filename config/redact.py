"""Scrub secrets out of text that came from elsewhere (a server's answer, an httpx error).

A BFL 403 or 422 may echo the key it was sent; httpx may quote a header it refused. Such text ends
up in exception messages, job reasons, pause reasons, logs and ``fluxq status``, so every piece of
it passes through ``redact`` first.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretStr

Secrets = Iterable[SecretStr | str | None]
"""What ``redact`` scrubs: plain strings, pydantic secrets, and None for an unset one."""

REDACTED = "[redacted]"
"""What a secret is replaced with."""

MAX_TEXT_CHARS = 500
"""The longest text ``redact`` returns: a server's error page is not a job reason."""

MIN_TRANSFORM_CHARS = 8
"""Secrets at least this long are also looked for in their stripped, quoted and escaped forms.

A shorter secret's transforms are too likely to occur by chance in ordinary text.
"""

ELLIPSIS = "…"


def _plain(secret: SecretStr | str | None) -> str:
    if secret is None:
        return ""
    if isinstance(secret, SecretStr):
        return secret.get_secret_value()
    return secret


def _forms(value: str) -> set[str]:
    """The secret and, when long enough, how it looks after the usual transforms."""
    forms = {value}
    if len(value) >= MIN_TRANSFORM_CHARS:
        for base in {value, value.strip()}:
            forms.update(
                {
                    base,
                    quote(base, safe=""),
                    quote(base),
                    quote_plus(base),
                    json.dumps(base)[1:-1],  # as a JSON string body echoes it
                    repr(base)[1:-1],  # as str() of a dict or list shows it
                    repr(base.encode("utf-8", "backslashreplace"))[2:-1],  # b'...' in h11 errors
                }
            )
    return {form for form in forms if form}


def _compile(secrets: Secrets) -> tuple[re.Pattern[str] | None, int]:
    return _compile_values(tuple(sorted({_plain(secret) for secret in secrets})))


@functools.lru_cache(maxsize=32)
def _compile_values(values: tuple[str, ...]) -> tuple[re.Pattern[str] | None, int]:
    """One expression matching every form of every non-empty secret (longest first), and the
    length of the longest form."""
    forms: set[str] = set()
    for value in values:
        if value:
            forms |= _forms(value)
    if not forms:
        return None, 0
    ordered = sorted(forms, key=len, reverse=True)
    # Percent-encoding may come back with lower-case hex digits: match case-insensitively only the
    # forms that contain an escape, so a plain secret's case still has to match exactly.
    parts = [f"(?i:{re.escape(form)})" if "%" in form else re.escape(form) for form in ordered]
    return re.compile("|".join(parts)), len(ordered[0])


def redact(
    text: str,
    secrets: Secrets,
    *,
    max_chars: int = MAX_TEXT_CHARS,
) -> str:
    """``text`` with every occurrence of each secret replaced by ``[redacted]``, at most max_chars.

    Secrets are replaced before the text is cut, so a secret straddling the cut never leaves a
    readable prefix behind.
    """
    if not isinstance(text, str):
        text = str(text)
    pattern, longest = _compile(secrets)
    if pattern is not None:
        # Look only as far as a secret starting inside the kept part can reach.
        text = pattern.sub(REDACTED, text[: max_chars + longest])
    if len(text) > max_chars:
        text = text[: max(0, max_chars - len(ELLIPSIS))] + ELLIPSIS
    return text


def mentions_secret(text: str, secrets: Secrets) -> bool:
    """True when ``text`` contains any form of any secret (so it must not be shown as it is)."""
    pattern, _ = _compile(secrets)
    return pattern is not None and pattern.search(text) is not None


def secrets_of(model: BaseModel) -> tuple[SecretStr, ...]:
    """Every ``SecretStr`` field of a model (such as Settings) that is set, found by field type."""
    found = []
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.append(value)
    return tuple(found)


__all__ = ["MAX_TEXT_CHARS", "REDACTED", "Secrets", "mentions_secret", "redact", "secrets_of"]
