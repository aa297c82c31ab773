"""One way to open fluxq's Redis client, whatever the URL names: a server, or Sentinels.

With ``sentinel://`` the client asks the Sentinels which server is the master of
FLUXQ_REDIS_SENTINEL_MASTER, and asks again after a connection to it fails: a failover needs no
restart (the call that met the old master fails; redis-py's retries reach the new one).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

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
