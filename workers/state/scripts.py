"""The Lua scripts of fluxq, read once from ``workers/lua`` and registered with a Redis client.

Each script is sent with ``lib.lua`` (the shared helpers) in front of it; redis-py runs it by SHA.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

LIB = "lib"
"""The helpers every script may call: backlog score, state move, pause and AIMD rules."""


@cache
def source(name: str) -> str:
    """The text Redis runs for ``lua/<name>.lua``: the shared helpers, then the script."""
    folder = resources.files("fluxq.workers.state") / "lua"
    lib = (folder / f"{LIB}.lua").read_text(encoding="utf-8")
    return lib + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Every fluxq script, registered once with one client (each a callable ``Script``)."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self.enqueue: Script = client.register_script(source("enqueue"))
        self.transition: Script = client.register_script(source("transition"))
        self.if_exists: Script = client.register_script(source("if_exists"))
        self.start_submit: Script = client.register_script(source("start_submit"))
        self.mark_uncertain: Script = client.register_script(source("mark_uncertain"))
        self.admit: Script = client.register_script(source("admit"))
        self.requeue_front: Script = client.register_script(source("requeue_front"))
        self.rate_limited: Script = client.register_script(source("rate_limited"))
        self.enqueue_lane: Script = client.register_script(source("enqueue_lane"))
        self.cancel_lane: Script = client.register_script(source("cancel_lane"))
        self.retry: Script = client.register_script(source("retry"))
        self.refuse: Script = client.register_script(source("refuse"))
