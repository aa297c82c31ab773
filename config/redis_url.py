"""The check of a FLUXQ_REDIS_URL, as a pure function: no pydantic, so a fast path can use it.

``config.settings`` validates ``redis_url`` with it; ``fluxq batch status``'s fast path
(``fluxq.cli.fast_status``) takes the URL only when it passes the very same check.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

REDIS_URL_SHAPE = (
    "use redis://HOST:PORT/DB such as redis://127.0.0.1:6379/0 "
    "(or rediss://HOST:PORT/DB, unix:///path/to/redis.sock, or Sentinels as "
    "sentinel://HOST:PORT;sentinel://HOST:PORT/DB)"
)
"""What a valid FLUXQ_REDIS_URL looks like: the end of every message about a bad one."""

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A ``sentinel://`` URL, the form Celery documents: the Sentinels to ask for the master,
    and the master's password, user and database (the Sentinels themselves need none here)."""

    sentinels: tuple[tuple[str, int], ...]
    password: str | None
    username: str | None
    db: int


def is_sentinel(url: str) -> bool:
    """True for a ``sentinel://`` URL (checked or not)."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel(url: str) -> SentinelURL:
    """The parts of a checked ``sentinel://[:password@]host:port[;sentinel://...][/db]`` URL:
    the database is the last part's path; a password on any part is the master's."""
    hosts: list[tuple[str, int]] = []
    password = username = None
    db = 0
    for piece in url.strip().split(";"):
        parts = urlsplit(piece)
        assert parts.hostname is not None
        hosts.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
        password = unquote(parts.password) if parts.password else password
        username = unquote(parts.username) if parts.username else username
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
    return SentinelURL(tuple(hosts), password, username, db)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a (stripped, non-empty) Redis URL, or None when it is fine.

    The answer never repeats the URL: it may hold a password.
    """
    if is_sentinel(url):
        return _sentinel_problem(url)
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


def _sentinel_problem(url: str) -> str | None:
    pieces = url.split(";")
    for number, piece in enumerate(pieces, start=1):
        where = f"Sentinel {number} of {len(pieces)}" if len(pieces) > 1 else "the Sentinel"
        parts = urlsplit(piece.strip())
        if parts.scheme != SENTINEL_SCHEME:
            return f"{where} is not a sentinel:// URL (separate Sentinels with ;)"
        if parts.query or parts.fragment:
            return f"{where} has options (?...), which Sentinel URLs do not take here"
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            return f"{where} has a port that is not a number from 0 to 65535"
        if not parts.hostname:
            return f"{where} names no host"
        db = parts.path.strip("/")
        if db and (not db.isdigit() or number != len(pieces)):
            return f"{where} has a database that is not a number after the last Sentinel"
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
