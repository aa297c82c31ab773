"""What every command shares: the consoles, settings built once, and failures as one clear line.

A failure a user can cause (a bad setting, Redis unreachable, a port in use) becomes one line on
stderr and exit code 2; ``fluxq --debug …`` (or ``FLUXQ_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit, urlunsplit

import redis
import typer
from rich.console import Console

from fluxq.config.errors import ConfigError, FluxqError
from fluxq.config.settings import Settings, load_settings
from fluxq.workers.state.redis_client import connect
from fluxq.workers.state.store import JobStore, ReplicaShortfall

if TYPE_CHECKING:
    from fluxq.workers.runtime import Runtime

console = Console()
err_console = Console(stderr=True, highlight=False)

USER_ERROR_EXIT = 2
"""Exit code of a failure the user can fix (bad input, unreachable service, port in use)."""


class Options:
    """Process-wide CLI options set by the root callback."""

    debug: bool = os.environ.get("FLUXQ_DEBUG", "") not in ("", "0")
    redis_url: str | None = None
    embedded_said: bool = False
    """Whether this command has said it uses the embedded Redis (it says so once)."""


def one_line(message: str) -> str:
    """``message`` on one line: a ``head:`` line over indented entries becomes ``head: a; b``.

    A ConfigError names each bad variable on a line of its own; the CLI prints one line.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line.replace("Value error, ", "", 1) for line in lines]  # pydantic's prefix
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:])}"
    return "; ".join(lines)


def fail(message: str, *, cause: BaseException | None = None) -> NoReturn:
    """Print one line naming the problem and the fix, and exit 2.

    With ``--debug`` (or FLUXQ_DEBUG=1) ``cause``, when given, is raised instead: the traceback.
    """
    if cause is not None and Options.debug:
        raise cause
    err_console.print(f"fluxq: {one_line(message)}", markup=False, soft_wrap=True)
    raise typer.Exit(code=USER_ERROR_EXIT)


def settings_or_exit() -> Settings:
    """Load settings once for this command, or name every bad variable and exit 2."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        fail(str(exc), cause=exc)
    Options.redis_url = settings.redis_url
    return settings


def with_redis_or_exit(settings: Settings) -> Settings:
    """``settings`` with a Redis URL: FLUXQ_REDIS_URL when set, else the embedded Redis of the
    data dir (FLUXQ_DATA_DIR), started when none runs and said once on stderr; exits 2 when it
    cannot start."""
    if settings.redis_url:
        return settings
    from fluxq.workers.process.embedded_redis import (  # lazy: unset URL only
        data_dir_of,
        ensure_shared,
    )

    data_dir = data_dir_of(settings)
    try:
        server, started = ensure_shared(data_dir)
    except (ConfigError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fail(
            f"FLUXQ_REDIS_URL is unset and the embedded Redis in {data_dir} cannot start: "
            f"{reason} (set FLUXQ_REDIS_URL, or FLUXQ_DATA_DIR to another directory)",
            cause=exc,
        )
    Options.redis_url = server.url
    if not Options.embedded_said:
        Options.embedded_said = True
        how = "started it; " if started else ""
        err_console.print(
            f"fluxq: using the embedded Redis at {shown_url(server.url)} ({how}data in "
            f"{server.data_dir}; `fluxq redis stop` stops it)",
            markup=False,
            soft_wrap=True,
        )
    return settings.with_overrides(redis_url=server.url)


def runtime_or_exit(settings: Settings) -> Runtime:
    """A producer-side Runtime on the workers' Redis (``with_redis_or_exit``); exits 2 when it
    cannot be reached."""
    settings = with_redis_or_exit(settings)
    from fluxq.workers.dispatch import (
        celery_runtime,  # lazy: Celery loads only for commands using it
    )

    rt = celery_runtime(settings)
    try:
        rt.redis.ping()
    except redis.RedisError as exc:
        rt.close()
        fail(redis_failure(settings.redis_url, exc), cause=exc)
    return rt


def store_or_exit(settings: Settings) -> JobStore:
    """Job and batch records on the workers' Redis without the pipeline (no Celery, no BFL
    client): what read-only commands such as ``fluxq batch status`` need, fast to start."""
    settings = with_redis_or_exit(settings)
    assert settings.redis_url is not None
    client: redis.Redis[str] = connect(
        settings.redis_url, sentinel_master=settings.redis_sentinel_master, decode_responses=True
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        fail(redis_failure(settings.redis_url, exc), cause=exc)
    return JobStore(
        client,
        terminal_ttl_s=settings.job_ttl_s,
        min_replicas=settings.redis_min_replicas,
        replica_wait_ms=settings.redis_replica_wait_ms,
    )


def shown_url(url: str | None) -> str:
    """A Redis URL fit to print: any password replaced by ***."""
    if not url:
        return "(unset)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redis_failure(url: str | None, exc: BaseException) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"cannot reach Redis at {shown_url(url)} ({reason}). Start it, or fix FLUXQ_REDIS_URL "
        "(unset, fluxq starts an embedded one of its own, shared by every command)."
    )


def explain(exc: BaseException) -> str | None:
    """One line for a failure a user can cause, or None for a bug (shown with a hint)."""
    if isinstance(exc, ReplicaShortfall):
        return one_line(str(exc))
    if isinstance(exc, redis.RedisError):
        return redis_failure(Options.redis_url, exc)
    if isinstance(exc, FluxqError):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"address already in use ({exc.strerror}): pick another port with --port."
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind that address ({exc.strerror}): use a loopback address."
    return None
