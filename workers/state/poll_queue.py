"""Jobs waiting for their next poll: one sorted set per key, the score when the poll is due.

A submit (or a Pending answer, or the sweep) puts a job in with its due time; the pollers of the
worker processes claim what is due in one round trip, poll it, and put it back with its next due
time or take it out. A claim moves the job's score to the claim's end, so a poller that dies
mid-poll leaves the job to be claimed again then (a second GET of a result costs nothing).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from fluxq.workers.state import keys
from fluxq.workers.state.scripts import source


@dataclass(frozen=True)
class Claim:
    """What one claim took, and when the earliest job left in the queue is due (None if none)."""

    job_ids: list[str]
    next_due_s: float | None


class PollQueue:
    """``fluxq:polls:{k}``: the key's jobs waiting for a poll, by due time."""

    def __init__(self, client: redis.Redis[str], label: str) -> None:
        self._redis = client
        self.key = keys.polls(label)
        self._claim = client.register_script(source("claim_polls"))
        self.wakeup = threading.Event()
        """Set when this process adds a job due before its poller means to look again (and by
        a poller thread that frees up while all were busy): the process's poller waits on it
        rather than looking at Redis on a short timer."""
        self.next_look_s = 0.0
        """When this process's poller means to look again (epoch seconds; infinity while it is
        looking, so an add then always wakes it)."""

    def add(self, job_id: str, *, due_s: float) -> None:
        """Poll ``job_id`` at ``due_s`` (epoch seconds); an earlier or later time replaces it."""
        self._redis.zadd(self.key, {job_id: due_s})
        if due_s < self.next_look_s:
            self.wakeup.set()

    def remove(self, job_id: str) -> None:
        """Polling ``job_id`` is over."""
        self._redis.zrem(self.key, job_id)

    def claim(self, *, now_s: float, limit: int, claim_s: float) -> Claim:
        """Take up to ``limit`` due jobs, each claimed until ``now_s + claim_s``."""
        due, first = self._claim(keys=[self.key], args=[now_s, limit, now_s + claim_s])
        return Claim([str(job_id) for job_id in due], float(first) if first else None)

    def due_s(self, job_id: str) -> float | None:
        """When ``job_id``'s next poll is due, or None when it waits for none."""
        score = self._redis.zscore(self.key, job_id)
        return None if score is None else float(score)

    def size(self) -> int:
        return int(self._redis.zcard(self.key))
