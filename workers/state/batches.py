"""A batch at a glance, read from its counters alone: the same cost for ten jobs or a million.

Kept apart from ``tasks.batches`` (which acts on batches and needs the whole pipeline) so that
``fluxq batch status`` starts without loading Celery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fluxq.workers.state.jobs import State

if TYPE_CHECKING:  # an annotation only: the fast `fluxq batch status` imports no redis-py
    from fluxq.workers.state.store import JobStore

DEFAULT_BATCH_PRIORITY = 2
"""Batches rank below jobs sent one by one (priority 5) unless told otherwise; the lane share
(``workers.state.limiter.LANE_SHARE``) keeps them from starving."""

TOP_REASONS = 10


@dataclass(frozen=True)
class BatchStatus:
    """A batch at a glance, from its counters: no job is read."""

    batch: str
    counts: dict[str, int]
    total: int
    priority: int
    created_at: float | None
    started_at: float | None
    budget: float | None
    committed: float
    spent: float
    paused: str | None
    reasons: dict[str, int]
    images_per_minute: float | None
    eta_s: float | None

    @property
    def waiting(self) -> int:
        """Jobs not ended yet: queued, admitted, submitted or ready."""
        return sum(self.counts.get(state.value, 0) for state in State if not state.terminal)

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.waiting == 0


def _float(raw: Mapping[str, str], name: str) -> float | None:
    value = raw.get(name)
    return None if value is None or value == "" else float(value)


def read_batch_status(store: JobStore, batch: str, *, now_s: float) -> BatchStatus | None:
    """The batch's counters, credits and failure reasons; None when there is no such batch."""
    raw = store.batch_record(batch)
    if not raw:
        return None
    return status_from_records(batch, raw, store.reasons(batch), now_s=now_s)


def status_from_records(
    batch: str, raw: Mapping[str, str], reasons_raw: Mapping[str, int | str], *, now_s: float
) -> BatchStatus | None:
    """The status from the batch hash and the reasons hash as read (``keys.batch``,
    ``keys.reasons``); None when the batch hash is empty (no such batch)."""
    if not raw:
        return None
    now = now_s
    counts = {state.value: int(raw.get(state.value, 0)) for state in State}
    counts["uncertain"] = int(raw.get("uncertain", 0))
    started = _float(raw, "started_at")
    done = counts[State.DONE.value]
    rate = None
    eta = None
    if started is not None and done > 0 and now > started:
        rate = done / (now - started) * 60.0
        waiting = sum(counts[state.value] for state in State if not state.terminal)
        eta = waiting / (rate / 60.0)
    by_count = {kind: int(count) for kind, count in reasons_raw.items()}
    reasons = dict(sorted(by_count.items(), key=lambda kv: -kv[1])[:TOP_REASONS])
    return BatchStatus(
        batch=batch,
        counts=counts,
        total=int(raw.get("total", 0)),
        priority=int(raw.get("priority", DEFAULT_BATCH_PRIORITY)),
        created_at=_float(raw, "created_at"),
        started_at=started,
        budget=_float(raw, "budget"),
        committed=max(0.0, _float(raw, "committed") or 0.0),
        spent=_float(raw, "spent") or 0.0,
        paused=raw.get("paused"),
        reasons=reasons,
        images_per_minute=rate,
        eta_s=eta,
    )
