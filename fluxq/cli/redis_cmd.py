"""``fluxq redis status`` and ``fluxq redis stop``: the embedded Redis that fluxq shares.

With FLUXQ_REDIS_URL unset, the first command that needs Redis starts one per data directory
(``workers.process.embedded_redis``); it keeps running, with its append-only file, until
``fluxq redis stop``. Neither command here starts it.
"""

from __future__ import annotations

import time

import redis
import typer

from fluxq.cli.common import console, err_console, fail, settings_or_exit, shown_url
from fluxq.config.errors import ConfigError
from fluxq.config.settings import Settings
from fluxq.workers.process.embedded_redis import (
    STATE_FILE,
    SharedRedis,
    aof_bytes,
    data_dir_of,
    running_shared,
    stop_shared,
)
from fluxq.workers.state import keys
from fluxq.workers.state.store import JobStore

redis_app = typer.Typer(
    name="redis",
    help="The embedded Redis fluxq shares when FLUXQ_REDIS_URL is unset: status, stop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

NOT_RUNNING_EXIT = 1
"""``fluxq redis status``'s exit code when the embedded Redis is not running."""


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _url_note(settings: Settings) -> None:
    if settings.redis_url:
        err_console.print(
            f"fluxq: FLUXQ_REDIS_URL is set ({shown_url(settings.redis_url)}): fluxq commands use "
            "that Redis, not the embedded one shown here",
            markup=False,
            soft_wrap=True,
        )


def _jobs_line(client: redis.Redis[str]) -> str:
    """fluxq's jobs by batch counters (lines waiting in a batch count too): no job is read."""
    store = JobStore(client)
    batches = store.batches()
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.hmget(keys.batch(batch), "total", "done", "failed", "cancelled")
    totals = [0, 0, 0, 0]
    for row in pipe.execute():
        for i, value in enumerate(row):
            totals[i] += int(value or 0)
    total, done, failed, cancelled = totals
    waiting = total - done - failed - cancelled
    return (
        f"{total:,} in {len(batches):,} batches ({waiting:,} waiting, {done:,} done, "
        f"{failed:,} failed, {cancelled:,} cancelled)"
    )


def _describe(server: SharedRedis) -> list[str]:
    client = server.client()
    try:
        persistence = client.info("persistence")
        memory = client.info("memory")
        jobs = _jobs_line(client)
    finally:
        client.close()
    aof = "on" if str(persistence.get("aof_enabled", "0")) == "1" else "off"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(server.started_at))
    return [
        f"embedded Redis: running (pid {server.pid}, started {started})",
        f"  url: {shown_url(server.url)} (password in {server.data_dir / STATE_FILE})",
        f"  data dir: {server.data_dir}",
        f"  AOF: {aof} (appendfsync everysec; {aof_bytes(server.data_dir):,} bytes on disk)",
        f"  memory used: {memory.get('used_memory_human', '?')}",
        f"  fluxq jobs: {jobs}",
    ]


@redis_app.command("status")
def status_command() -> None:
    """Whether the embedded Redis runs: pid, URL, data dir, AOF, memory, jobs (exit 1: not)."""
    settings = settings_or_exit()
    _url_note(settings)
    data_dir = data_dir_of(settings)
    server = running_shared(data_dir)
    if server is None:
        _say(f"embedded Redis: not running (data dir {data_dir})")
        _say("  any fluxq command that needs Redis starts it (`fluxq worker`, `fluxq enqueue`…)")
        raise typer.Exit(code=NOT_RUNNING_EXIT)
    try:
        lines = _describe(server)
    except redis.RedisError as exc:
        fail(f"the embedded Redis (pid {server.pid}) stopped answering: {exc}", cause=exc)
    for line in lines:
        _say(line)


@redis_app.command("stop")
def stop_command(
    timeout_s: float = typer.Option(
        30.0, "--timeout", min=1.0, help="Seconds to wait for it to save and exit."
    ),
) -> None:
    """Stop the embedded Redis (SHUTDOWN SAVE, then wait for it to exit); nothing if not running."""
    settings = settings_or_exit()
    _url_note(settings)
    data_dir = data_dir_of(settings)
    try:
        stopped = stop_shared(data_dir, timeout_s=timeout_s)
    except (ConfigError, OSError) as exc:
        fail(f"cannot stop the embedded Redis in {data_dir}: {exc}", cause=exc)
    if stopped is None:
        _say(f"embedded Redis: not running (data dir {data_dir}); nothing to stop")
        return
    _say(
        f"stopped the embedded Redis (pid {stopped.pid}); its data stays in {data_dir} "
        f"(append-only file, {aof_bytes(data_dir):,} bytes): the next fluxq command starts it again"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(redis_app, name="redis")
