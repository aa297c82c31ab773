"""The check of a FLUXQ_REDIS_URL, as a pure function: no pydantic, so a fast path can use it.

``config.settings`` validates ``redis_url`` with it; ``fluxq batch status``'s fast path
(``fluxq.cli.fast_status``) takes the URL only when it passes the very same check.
"""

from __future__ import annotations

from urllib.parse import urlsplit

REDIS_URL_SHAPE = (
    "use redis://HOST:PORT/DB such as redis://127.0.0.1:6379/0 "
    "(or rediss://HOST:PORT/DB, unix:///path/to/redis.sock)"
)
"""What a valid FLUXQ_REDIS_URL looks like: the end of every message about a bad one."""


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a (stripped, non-empty) Redis URL, or None when it is fine.

    The answer never repeats the URL: it may hold a password.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "is not a Redis URL"
    if parts.scheme == "unix":
        return None if parts.path else "names no socket path"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    db = parts.path.strip("/")
    if not parts.hostname:
        return "names no host"
    if db and not db.isdigit():
        return "has a database (the part after the last /) that is not a number"
    return None


def check_redis_url(value: str | None) -> str | None:
    """The URL stripped, None when unset or blank; ValueError naming the problem when bad."""
    url = (value or "").strip()
    if not url:
        return None  # unset: `fluxq worker` and `fluxq demo` start an embedded Redis
    problem = redis_url_problem(url)
    if problem:
        raise ValueError(f"{problem}; {REDIS_URL_SHAPE}")
    return url
