"""Simulated BFL accounts: one per x-key, with credits, the active-task count and the counters.

Keys are never stored: accounts are found by the key's sha256 and shown by a 12-hex-digit label.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def key_digest(key: str) -> str:
    """The full sha256 of an x-key: how accounts are found without keeping the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def account_label(key: str) -> str:
    """The non-secret label an account is reported under in ``/sim/stats``."""
    return key_digest(key)[:12]


@dataclass
class Account:
    """One account's balance, running tasks and counters (everything ``/sim/stats`` reports)."""

    label: str
    credits: float
    credits_spent: float = 0.0
    submits: int = 0
    submits_by_endpoint: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    duplicate_submits: int = 0
    rate_limited_429: int = 0
    phantom_429: int = 0
    payment_required_402: int = 0
    invalid_422: int = 0
    lost_responses: int = 0
    polls: int = 0
    polls_wrong_host: int = 0
    max_polls_per_task: int = 0
    downloads: int = 0
    expired_downloads: int = 0
    webhooks_sent: int = 0
    webhooks_delivered: int = 0
    webhooks_abandoned: int = 0
    max_active: int = 0
    max_active_by_group: Counter[str] = field(default_factory=Counter)
    # (ready_at, task id, cap group): a heap, so finished tasks leave from the front in O(log n).
    _running: list[tuple[float, str, str | None]] = field(default_factory=list, repr=False)
    _active_by_group: Counter[str] = field(default_factory=Counter, repr=False)
    # Submits per (prompt, seed, endpoint): duplicates are what a double-submitting client causes.
    _triples: dict[tuple[str, int | None, str], int] = field(default_factory=dict, repr=False)

    def prune(self, now: float) -> None:
        """Forget tasks that reached a terminal status by ``now``: that is what frees the cap."""
        while self._running and self._running[0][0] <= now:
            _, _, group = heapq.heappop(self._running)
            if group is not None:
                self._active_by_group[group] -= 1

    def active(self, now: float) -> int:
        """Tasks not yet terminal at ``now``."""
        self.prune(now)
        return len(self._running)

    def active_in(self, group: str, now: float) -> int:
        """Tasks of cap group ``group`` not yet terminal at ``now``."""
        self.prune(now)
        return self._active_by_group[group]

    def start(self, task_id: str, ready_at: float, group: str | None, now: float) -> None:
        """Count a new task as active until ``ready_at`` and update the maxima."""
        self.prune(now)
        if ready_at > now:
            heapq.heappush(self._running, (ready_at, task_id, group))
            if group is not None:
                self._active_by_group[group] += 1
        self.max_active = max(self.max_active, len(self._running))
        if group is not None:
            current = self._active_by_group[group]
            self.max_active_by_group[group] = max(self.max_active_by_group[group], current)

    def record_submit(self, endpoint: str, prompt: str, seed: int | None, cost: float) -> None:
        """Bill an accepted submit and count it, noticing a repeated (prompt, seed, endpoint)."""
        self.credits -= cost
        self.credits_spent += cost
        self.submits += 1
        self.submits_by_endpoint[endpoint] += 1
        triple = (prompt, seed, endpoint)
        seen = self._triples.get(triple, 0)
        self._triples[triple] = seen + 1
        if seen:
            self.duplicate_submits += 1

    def record_poll(self, task_polls: int) -> None:
        """Count one poll of a task that has now been polled ``task_polls`` times."""
        self.polls += 1
        self.max_polls_per_task = max(self.max_polls_per_task, task_polls)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The counters as JSON; prompts appear only in the list of duplicated triples."""
        active = self.active(now)
        duplicates = [
            {"prompt": prompt, "seed": seed, "endpoint": endpoint, "count": count}
            for (prompt, seed, endpoint), count in self._triples.items()
            if count > 1
        ]
        return {
            "label": self.label,
            "credits": round(self.credits, 4),
            "credits_spent": round(self.credits_spent, 4),
            "submits": self.submits,
            "submits_by_endpoint": dict(self.submits_by_endpoint),
            "outcomes": dict(self.outcomes),
            "duplicate_submits": self.duplicate_submits,
            "duplicates": duplicates,
            "active": active,
            "active_by_group": {g: n for g, n in self._active_by_group.items() if n},
            "max_active": self.max_active,
            "max_active_by_group": dict(self.max_active_by_group),
            "rate_limited_429": self.rate_limited_429,
            "phantom_429": self.phantom_429,
            "payment_required_402": self.payment_required_402,
            "invalid_422": self.invalid_422,
            "lost_responses": self.lost_responses,
            "polls": self.polls,
            "polls_wrong_host": self.polls_wrong_host,
            "max_polls_per_task": self.max_polls_per_task,
            "downloads": self.downloads,
            "expired_downloads": self.expired_downloads,
            "webhooks_sent": self.webhooks_sent,
            "webhooks_delivered": self.webhooks_delivered,
            "webhooks_abandoned": self.webhooks_abandoned,
        }


class Accounts:
    """Every account seen since the last reset, found by key digest."""

    def __init__(self) -> None:
        self._by_digest: dict[str, Account] = {}

    def get_or_create(self, key: str, initial_credits: float) -> Account:
        """The account of ``key``, opened with ``initial_credits`` on first use."""
        digest = key_digest(key)
        account = self._by_digest.get(digest)
        if account is None:
            account = Account(label=digest[:12], credits=initial_credits)
            self._by_digest[digest] = account
        return account

    def by_label(self, label: str) -> Account | None:
        """The account shown under ``label``, if any."""
        return next((a for a in self._by_digest.values() if a.label == label), None)

    def all(self) -> list[Account]:
        """Every account, in order of first use."""
        return list(self._by_digest.values())

    def clear(self) -> None:
        """Forget every account (their balances start over on next use)."""
        self._by_digest.clear()
