"""The slot limiter: lease-based admission to one API key's active-task cap, with AIMD and pause.

A slot is a lease (a sorted-set member scored by its expiry) held from before the POST until BFL
reports a terminal status; ``lua/admit.lua`` takes slots and pops waiting jobs in one step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from fluxq.workers.state import keys
from fluxq.workers.state.cap_rules import PAUSE_TEXT as PAUSE_TEXT  # re-exported: the limiter's API
from fluxq.workers.state.cap_rules import Pause as Pause
from fluxq.workers.state.cap_rules import PauseKind as PauseKind
from fluxq.workers.state.cap_rules import aimd_effective_cap as aimd_effective_cap
from fluxq.workers.state.cap_rules import pause_in_force
from fluxq.workers.state.scripts import Scripts

LANE_SHARE = 0.25
"""Batch lanes may always fill this share of the cap first (6 of 24): jobs sent one by one
(services) overtake waiting batch jobs, but never starve them."""

MAX_STALE_PER_ADMIT = 1000
"""Backlog entries of expired or cancelled jobs one admit step may drop before it returns."""


@dataclass(frozen=True)
class Refusal:
    """The last POST BFL refused before creating anything (503, unreachable): when, and why."""

    at_s: float
    detail: str


@dataclass(frozen=True)
class Doubt:
    """Slots held for doubtful POSTs: how many, and when the first and the last hold end."""

    count: int
    first_end_s: float | None
    last_end_s: float | None


@dataclass(frozen=True)
class Caps:
    """Active-task caps of one API key: ``key_cap`` in all, and nested caps for some groups."""

    key_cap: int
    group_caps: Mapping[str, int]

    def __post_init__(self) -> None:
        if self.key_cap < 1:
            raise ValueError(f"key_cap must be at least 1, got {self.key_cap}")
        bad = {g: c for g, c in self.group_caps.items() if c < 0}
        if bad:
            raise ValueError(f"group caps must not be negative: {bad}")


class SlotLimiter:
    """Admission for one API key (by its label): leases, nested group caps, AIMD, pause.

    Every lease counts until it is released, expired or not: only the sweep, which knows whether
    the BFL task behind an expired lease has finished, frees it (``expired`` then ``release``).
    """

    def __init__(
        self,
        redis: redis.Redis[str],
        *,
        label: str,
        caps: Caps,
        lease_ttl_s: float = 120.0,
        aimd_increase_interval_s: float = 5.0,
        aimd_decrease_factor: float = 0.5,
        probe_extra: int = 0,
    ) -> None:
        if lease_ttl_s <= 0 or aimd_increase_interval_s <= 0:
            raise ValueError("lease_ttl_s and aimd_increase_interval_s must be positive")
        if not 0 < aimd_decrease_factor < 1:
            raise ValueError(f"aimd_decrease_factor must be in (0, 1), got {aimd_decrease_factor}")
        self._redis = redis
        self._scripts = Scripts(redis)
        self.label = label
        self.caps = caps
        self.lease_ttl_s = lease_ttl_s
        self.increase_interval_s = aimd_increase_interval_s
        self.decrease_factor = aimd_decrease_factor
        self.probe_extra = probe_extra
        self._probe = keys.probe(label)
        self._stats = keys.stats(label)
        self._lane_slots = keys.lane_slots(label)
        self._doubt = keys.doubt(label)
        self._slots = keys.slots(label)
        self._cap_state = keys.cap_state(label)
        self._groups = keys.groups(label)

    def admit(self, *, now_s: float, max_jobs: int = 64) -> list[str]:
        """Admit up to ``max_jobs`` waiting jobs, best score first, as far as the caps allow."""
        group_caps = [part for g, c in sorted(self.caps.group_caps.items()) for part in (g, c)]
        admitted: list[str] = self._scripts.admit(
            keys=[
                self._groups,
                self._slots,
                self._cap_state,
                self._probe,
                self._lane_slots,
                keys.SEQ,
                self._doubt,
            ],
            args=[
                now_s,
                max_jobs,
                MAX_STALE_PER_ADMIT,
                self.lease_ttl_s,
                self.caps.key_cap,
                self.increase_interval_s,
                keys.job(""),
                keys.batch(""),
                keys.backlog(self.label, ""),
                keys.group_slots(self.label, ""),
                keys.EVENTS_CHANNEL,
                self.probe_extra,
                self.lease_ttl_s,
                keys.lanes(self.label, ""),
                keys.lane(self.label, "", "")[:-1],
                self.label,
                LANE_SHARE,
                *group_caps,
            ],
        )
        return list(admitted)

    def probe(self) -> str | None:
        """The job admitted beyond the cap whose POST is out or waiting to be retried, if any."""
        return self._redis.get(self._probe)

    def renew_probe(self, job_id: str) -> None:
        """Keep ``job_id`` the probe for another lease period (it is retrying after a 429)."""
        self._redis.set(self._probe, job_id, px=int(self.lease_ttl_s * 1000), xx=True)

    def end_probe(self, job_id: str) -> bool:
        """``job_id`` is no longer the probe (accepted, or failed otherwise): the next may go.

        Only the probe itself clears the marker and admission sets it only when it is absent,
        so reading then deleting cannot remove another job's marker (it expires on its own if
        its worker dies)."""
        if self._redis.get(self._probe) != job_id:
            return False
        return bool(self._redis.delete(self._probe))

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of the key's counters (``fluxq:stats:{k}``: 429s by kind, probes)."""
        self._redis.hincrby(self._stats, name, amount)

    def count_float(self, name: str, amount: float) -> None:
        """Add to one of the key's float counters (credits spent)."""
        self._redis.hincrbyfloat(self._stats, name, amount)

    def counters(self) -> dict[str, float]:
        return {name: float(value) for name, value in self._redis.hgetall(self._stats).items()}

    def hold(
        self,
        job_id: str,
        group: str,
        *,
        now_s: float,
        count: str | None = None,
        ttl_s: float | None = None,
        job_counter: str | None = None,
    ) -> int:
        """Renew the job's lease for ``ttl_s`` (default: the lease TTL), or take it back with no
        cap check if it was released: its BFL task is (about to be) running, so BFL counts it
        either way. One round trip, which also adds 1 to the key's counter ``count`` and to the
        job's field ``job_counter`` when given (a poll counts itself and its attempt this way);
        returns the job field's new value (0 without one)."""
        expiry: dict[str | bytes, float] = {job_id: now_s + (ttl_s or self.lease_ttl_s)}
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._slots, expiry)
        pipe.zadd(keys.group_slots(self.label, group), expiry)
        if count is not None:
            pipe.hincrby(self._stats, count, 1)
        if job_counter is not None:
            pipe.hincrby(keys.job(job_id), job_counter, 1)
        replies = pipe.execute()
        return int(replies[-1]) if job_counter is not None else 0

    def hold_many(
        self, held: list[tuple[str, str]], *, now_s: float, ttl_s: float | None = None
    ) -> None:
        """``hold`` for many (job_id, group) pairs in one round trip."""
        expiry_s = now_s + (ttl_s or self.lease_ttl_s)
        pipe = self._redis.pipeline(transaction=False)
        for job_id, group in held:
            pipe.zadd(self._slots, {job_id: expiry_s})
            pipe.zadd(keys.group_slots(self.label, group), {job_id: expiry_s})
        pipe.execute()

    def hold_doubtful(self, job_id: str, group: str, *, until_s: float) -> None:
        """Hold the slot of a job whose POST may have created a task until ``until_s`` exactly,
        and count it among the doubtful holds (``doubt``), which the AIMD cut leaves out."""
        expiry: dict[str | bytes, float] = {job_id: until_s}
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._slots, expiry)
        pipe.zadd(keys.group_slots(self.label, group), expiry)
        pipe.zadd(self._doubt, expiry)
        pipe.execute()

    def clear_doubt(self, job_id: str) -> None:
        """The job's task is known after all: its slot, if held, is an ordinary lease again."""
        self._redis.zrem(self._doubt, job_id)

    def doubt(self) -> Doubt:
        """Slots held now for doubtful POSTs (a lapsed hold counts until the sweep frees it)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(self._doubt)
        pipe.zrange(self._doubt, 0, 0, withscores=True)
        pipe.zrange(self._doubt, -1, -1, withscores=True)
        count, first, last = pipe.execute()
        return Doubt(
            count=int(count),
            first_end_s=float(first[0][1]) if first else None,
            last_end_s=float(last[0][1]) if last else None,
        )

    def lapse_at(self, job_id: str, group: str, *, until_s: float) -> None:
        """Make a lease still held lapse at ``until_s``; a lease given back stays freed."""
        expiry: dict[str | bytes, float] = {job_id: until_s}
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._slots, expiry, xx=True)
        pipe.zadd(keys.group_slots(self.label, group), expiry, xx=True)
        pipe.execute()

    def slot_keys(self, group: str) -> list[str]:
        """Every key a job's slot is held in (what ``release`` empties of it), for a state move
        that frees the slot in the same step (``JobStore.transition``'s ``leaves``)."""
        return [self._slots, keys.group_slots(self.label, group), self._lane_slots, self._doubt]

    def release(self, job_id: str, group: str) -> bool:
        """Free the job's slot; True if it held one."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._slots, job_id)
        pipe.zrem(keys.group_slots(self.label, group), job_id)
        pipe.srem(self._lane_slots, job_id)
        pipe.zrem(self._doubt, job_id)
        return bool(pipe.execute()[0])

    def requeue_front(
        self, job_id: str, group: str, *, now_s: float, reason: str, unsent: bool = False
    ) -> bool:
        """Put an admitted job back at the front of its priority band and free its slot;
        ``unsent`` (the job was certainly not sent) also drops its submit marker, in that step."""
        batch = self._redis.hget(keys.job(job_id), "batch")
        if batch is None:
            return False
        moved = self._scripts.requeue_front(
            keys=[
                keys.job(job_id),
                self._slots,
                keys.group_slots(self.label, group),
                keys.backlog(self.label, group),
                keys.batch(batch),
                self._lane_slots,
            ],
            args=[job_id, now_s, reason, keys.EVENTS_CHANNEL, "1" if unsent else "0"],
        )
        return bool(moved)

    def rate_limited(self, *, now_s: float, retry_after_s: float | None = None) -> int:
        """After a 429 despite a free slot: cut the effective cap from what is held; returns it."""
        cap: int = self._scripts.rate_limited(
            keys=[self._cap_state, self._slots, self._doubt],
            args=[
                now_s,
                self.caps.key_cap,
                self.increase_interval_s,
                self.decrease_factor,
                "" if retry_after_s is None else retry_after_s,
                PauseKind.RETRY_AFTER.value,
            ],
        )
        return int(cap)

    def effective_cap(self, *, now_s: float) -> int:
        reduced_to, reduced_at = self._redis.hmget(self._cap_state, "reduced_to", "reduced_at")
        return aimd_effective_cap(
            self.caps.key_cap,
            None if reduced_to is None else int(reduced_to),
            float(reduced_at or 0.0),
            now_s,
            self.increase_interval_s,
        )

    def refused(self, *, now_s: float, detail: str) -> None:
        """Record that BFL refused a POST before creating anything (for status and metrics)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._cap_state, mapping={"refused_at": repr(now_s), "refused_detail": detail})
        pipe.hincrby(self._stats, "refused_unavailable", 1)
        pipe.execute()

    def last_refusal(self) -> Refusal | None:
        """The last POST refused before creating anything, if any was."""
        at, detail = self._redis.hmget(self._cap_state, "refused_at", "refused_detail")
        return None if at is None else Refusal(at_s=float(at), detail=detail or "")

    def pause(self, kind: PauseKind, detail: str = "", *, until_s: float | None = None) -> None:
        """Stop admission until ``until_s``, or until ``resume()`` when None."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._cap_state, mapping={"pause_kind": kind.value, "pause_detail": detail})
        if until_s is None:
            pipe.hdel(self._cap_state, "paused_until")
        else:
            pipe.hset(self._cap_state, "paused_until", repr(float(until_s)))
        pipe.execute()

    def resume(self) -> None:
        self._redis.hdel(self._cap_state, "paused_until", "pause_kind", "pause_detail")

    def paused(self, *, now_s: float) -> Pause | None:
        """The pause in force at ``now_s``, or None when admission is open."""
        until, kind, detail = self._redis.hmget(
            self._cap_state, "paused_until", "pause_kind", "pause_detail"
        )
        return pause_in_force(until, kind, detail, now_s)

    def held(self) -> int:
        return int(self._redis.zcard(self._slots))

    def held_by_group(self) -> dict[str, int]:
        """Leases held per cap group (every group this key has seen, 0 included)."""
        groups = sorted(self._redis.smembers(self._groups))
        pipe = self._redis.pipeline(transaction=False)
        for group in groups:
            pipe.zcard(keys.group_slots(self.label, group))
        return dict(zip(groups, (int(n) for n in pipe.execute()), strict=True))

    def expired(self, *, now_s: float) -> list[tuple[str, str]]:
        """Leases whose expiry is before ``now_s``, as (job_id, group); they still count."""
        job_ids: list[str] = self._redis.zrangebyscore(self._slots, "-inf", f"({now_s!r}")
        if not job_ids:
            return []
        groups = sorted(self._redis.smembers(self._groups))
        pipe = self._redis.pipeline(transaction=False)
        for group in groups:
            pipe.zrangebyscore(keys.group_slots(self.label, group), "-inf", f"({now_s!r}")
        group_of = {
            job_id: group
            for group, members in zip(groups, pipe.execute(), strict=True)
            for job_id in members
        }
        return [(job_id, self._group_of(job_id, group_of)) for job_id in job_ids]

    def _group_of(self, job_id: str, known: Mapping[str, str]) -> str:
        if job_id in known:
            return known[job_id]
        return self._redis.hget(keys.job(job_id), "group") or keys.DEFAULT_GROUP

    def backlog_sizes(self) -> dict[str, int]:
        """Waiting jobs per cap group (every group this key has seen, 0 included)."""
        groups = sorted(self._redis.smembers(self._groups))
        pipe = self._redis.pipeline(transaction=False)
        for group in groups:
            pipe.zcard(keys.backlog(self.label, group))
        return dict(zip(groups, (int(n) for n in pipe.execute()), strict=True))
