"""Keeps the slot leases of this process's POSTs in flight renewed, however long a POST takes.

A POST's lease is short (``POST_LEASE_S``) and renewed often: a live worker's POST never looks
lapsed, and the POSTs of a worker that died are found by the sweep within seconds, not after a
whole lease TTL. A daemon thread renews every lease it is holding, in one round trip.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from fluxq.workers.state.limiter import SlotLimiter

log = logging.getLogger("fluxq.leases")

POST_LEASE_S = 15.0
"""How long the lease of a POST in flight outlives its last renewal. The price of a short one: a
worker stalled this long (or a Redis outage this long) makes the sweep settle its POSTs as
uncertain, and their late answers then recover them; the price of a long one: after a worker
dies, its slots stay idle this long before the sweep settles them (it was 120 s)."""

RENEWALS_PER_LEASE = 3
"""How many times a POST's lease is renewed within ``POST_LEASE_S``: every 5 s, so a missed
renewal never lapses it."""


class LeaseKeeper:
    """Renews the leases registered with ``holding`` until their block ends."""

    def __init__(
        self, limiter: SlotLimiter, *, clock: Callable[[], float], lease_s: float = POST_LEASE_S
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self.lease_s = lease_s
        """How long a POST's lease outlives its last renewal (``POST_LEASE_S``)."""
        self._interval_s = lease_s / RENEWALS_PER_LEASE
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
            self._limiter.hold_many(held, now_s=self._clock(), ttl_s=self.lease_s)
        return len(held)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.renew_now()
            except redis.RedisError as exc:  # Redis restarting: try again next interval
                log.warning("lease renewal failed, will retry: %s", exc)

    def close(self) -> None:
        self._stop.set()
