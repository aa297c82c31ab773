"""Saves due now: one Redis list per key, pushed by whoever saw the Ready, popped by the worker
processes that serve ``fluxq.save``.

A save used to be a Celery message: a publish, the consumer's read, the unacked bookkeeping, the
ack and three Flower events, about 10 Redis commands and a good share of a worker's CPU a job.
Here it is one LPUSH and one BRPOP. Nothing is lost with a process that dies after its pop: the
job stays Ready in the save watch (``fluxq:saves:{k}``), and the sweep sends its save again when
the watch ends, as it did for a Celery worker that died. A save that must wait (a retry after a
failed download) still goes through Celery with its countdown.
"""

from __future__ import annotations

import redis

from fluxq.workers.state import keys


class SaveQueue:
    """``fluxq:savequeue:{k}``: the key's jobs whose save is due, oldest first."""

    def __init__(self, client: redis.Redis[str], label: str) -> None:
        self._redis = client
        self.key = keys.save_queue(label)

    def push(self, job_id: str) -> None:
        self._redis.lpush(self.key, job_id)

    def pop(self, *, timeout_s: float) -> str | None:
        """The oldest due job, waiting up to ``timeout_s`` (whole seconds, at least 1) for one."""
        found = self._redis.brpop([self.key], timeout=max(1, round(timeout_s)))
        return None if found is None else str(found[1])

    def size(self) -> int:
        return int(self._redis.llen(self.key))
