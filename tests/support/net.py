"""Ports and waiting."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import redis

from fluxq.workers.process.embedded_redis import free_port

__all__ = ["free_port", "wait_until"]


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Call ``check`` until it is true or ``timeout_s`` passed; returns its last answer.

    A Redis error (a server restarting, or not up yet) counts as "not yet".
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if check():
                return True
        time.sleep(interval_s)
    with contextlib.suppress(redis.RedisError):
        return check()
    return False
