"""One way to open fluxq's Redis client, whatever the URL names: a server, or Sentinels.

With ``sentinel://`` the client asks the Sentinels which server is the master of
FLUXQ_REDIS_SENTINEL_MASTER, and asks again after a connection to it fails: a failover needs no
restart (the call that met the old master fails; redis-py's retries reach the new one).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from fluxq.config.redis_url import is_sentinel, parse_sentinel


def connect(url: str, *, sentinel_master: str, **options: Any) -> redis.Redis[Any]:
    """A client on ``url`` with redis-py ``options`` (timeouts, ``decode_responses`` ...); on a
    Sentinel URL, on the current master of ``sentinel_master``."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel(url)
    timeouts = {
        name: options[name]
        for name in ("socket_timeout", "socket_connect_timeout")
        if options.get(name) is not None
    }
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=timeouts)
    client: redis.Redis[Any] = sentinel.master_for(
        sentinel_master,
        db=parsed.db,
        password=parsed.password,
        username=parsed.username,
        **{"retry": failover_retry(), **options},
    )
    return client


FAILOVER_RETRIES = 12
FAILOVER_BACKOFF_CAP_S = 2.0


def failover_retry() -> Retry:
    """How a call on a Sentinel URL rides out a failover: retried on a connection error or
    timeout (each retry asks the Sentinels for the master afresh) for up to about 17 s, where
    redis-py's default gives up after about 3 s. A call that meets a longer failover (Sentinel's
    default down-after is 30 s) still fails: the caller's own retry (a task's, a sweep's next
    tick) takes it from there."""
    return Retry(ExponentialBackoff(cap=FAILOVER_BACKOFF_CAP_S, base=0.05), FAILOVER_RETRIES)


def follow_master(client: redis.Redis[Any]) -> None:
    """After a write no replica confirmed: when the Sentinels now name another master, drop the
    connections to the old one (idle ones now, busy ones as they are given back), so the next
    call reaches the new one. A master paused past a failover answers on its old connections
    until the Sentinels demote it (up to 10 s), and every write it takes then is lost. A client
    on one server, or Sentinels that cannot answer, are left as they are."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        with contextlib.suppress(redis.ConnectionError):
            pool.get_master_address()


MASTER_WATCH_S = 1.0
"""How often a process on a Sentinel URL asks the Sentinels which server is master."""


class MasterWatch:
    """On a Sentinel URL, ``follow_master`` every MASTER_WATCH_S on a thread of its own, so a
    process leaves a master the Sentinels replaced within a second, not when the old one is
    demoted (up to 10 s after it wakes from a pause, all of whose writes are lost). Its price:
    one question to a Sentinel a second per process. On one server it does nothing."""

    def __init__(self, client: redis.Redis[Any], *, every_s: float = MASTER_WATCH_S) -> None:
        self._client = client
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> MasterWatch:
        if isinstance(self._client.connection_pool, SentinelConnectionPool):
            self._thread = threading.Thread(
                target=self._run, name="fluxq-master-watch", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            with contextlib.suppress(redis.RedisError):
                follow_master(self._client)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._every_s + 5)
