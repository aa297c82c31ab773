"""Keeps the slot leases of this process's POSTs in flight renewed, however long a POST takes.

A lease lapses ``lease_ttl_s`` after its last renewal, and the sweep then decides what became of
the job. A live worker's POST must never look lapsed: a daemon thread renews every lease it is
holding, a few times per lease, in one round trip.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from workers.state.limiter import SlotLimiter

log = logging.getLogger("fluxq.leases")

RENEWALS_PER_LEASE = 4
"""How many times a lease is renewed within its TTL: a missed renewal or two never lapses it."""


class LeaseKeeper:
    """Renews the leases registered with ``holding`` until their block ends."""

    def __init__(self, limiter: SlotLimiter, *, clock: Callable[[], float]) -> None:
        self._limiter = limiter
        self._clock = clock
        self._interval_s = limiter.lease_ttl_s / RENEWALS_PER_LEASE
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, job_id: str, group: str) -> Iterator[None]:
        """Keep ``job_id``'s lease alive for the duration of the block."""
        with self._lock:
            self._held[job_id] = group
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fluxq-lease-keeper", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(job_id, None)

    def renew_now(self) -> int:
        """Renew every lease held now; returns how many."""
        with self._lock:
            held = list(self._held.items())
        if held:
            self._limiter.hold_many(held, now_s=self._clock())
        return len(held)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.renew_now()
            except redis.RedisError as exc:  # Redis restarting: try again next interval
                log.warning("lease renewal failed, will retry: %s", exc)

    def close(self) -> None:
        self._stop.set()
