"""The job store: a Redis hash per job, state changes as compare-and-set Lua steps, batch counters.

Counters move in the same script as the state, so ``batch_counts`` never scans jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.workers.files import safe_name
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import (
    MAX_PRIORITY,
    PROTECTED_FIELDS,
    WRITABLE_FIELDS,
    Job,
    NewJob,
    State,
    check_moves,
    parse_job,
    sources,
)
from fluxq.workers.state.redis_client import follow_master
from fluxq.workers.state.scripts import Scripts

PRIORITY_BAND = 2**42
"""Width of one priority band of backlog scores: fronted jobs in its first half, new ones after."""

MAX_SEQ = 2**41 - 1
"""The largest arrival number a backlog score can hold (scores stay exact in a double: < 2**46)."""


ENQUEUE_CHUNK = 500
"""Jobs per pipeline round trip in ``enqueue_many``."""

NAME_TAKEN = -1
"""What ``enqueue.lua`` returns when another job of the batch holds the job's file name."""


PLACEMENTS_KEPT = 8192
"""Jobs whose batch, key and group a store remembers: more than one key's jobs in flight and
waiting to be saved; about 1 MB."""


REPLICATED_TRIES = 3
"""Times a write that must reach a replica is made before ReplicaShortfall: after a shortfall the
next try goes to the master the Sentinels name now (``follow_master``)."""


class ReplicaShortfall(redis.ConnectionError):
    """A write no replica confirmed (FLUXQ_REDIS_MIN_REPLICAS) after REPLICATED_TRIES tries: as
    with a connection lost mid-call, it may or may not have happened, and a failover now could
    lose it. Making it again is safe (each such write is idempotent)."""


class NameTaken(InvalidRequest):
    """Raised on enqueue when another job of the batch holds the job's file name (``name``)."""


def name_key(name: str) -> str:
    """The key of a job's file name in ``fluxq:names:{batch}``: its file stem, lower-cased, so
    names differing only in case (one file on a case-insensitive disk) are one name too."""
    return safe_name(name).lower()


def _tally(jobs: list[NewJob], results: list[Any], refused: list[NewJob]) -> int:
    """How many of a chunk's enqueue results created a job; collect those refused for a name."""
    refused.extend(job for job, result in zip(jobs, results, strict=True) if int(result) < 0)
    return sum(1 for result in results if int(result) == 1)


REASON_KIND_CHARS = 80


def reason_kind(reason: str) -> str:
    """The first clause of a failure reason, what groups failures in a batch's status."""
    head = reason.split(":", 1)[0].strip() if ":" in reason[:REASON_KIND_CHARS] else reason
    return head[:REASON_KIND_CHARS] or "unknown"


def backlog_score(priority: int, seq: int, *, front: bool = False) -> float:
    """The backlog score of a job: lower runs sooner (``lua/lib.lua`` computes the same).

    Higher priority gives a lower band; within a band fronted jobs (requeued after a 429) come
    first, then new ones, each in arrival order (``seq``). No score crosses into another band.
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be 0..{MAX_PRIORITY}, got {priority}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be 0..{MAX_SEQ}, got {seq}")
    band = (MAX_PRIORITY - priority) * PRIORITY_BAND
    return float(band + seq if front else band + PRIORITY_BAND // 2 + seq)


def _encode(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _check_writable(names: Iterable[str]) -> None:
    protected = sorted(PROTECTED_FIELDS.intersection(names))
    if protected:
        raise ValueError(f"fields written only by the store: {', '.join(protected)}")
    unknown = sorted(set(names) - WRITABLE_FIELDS - PROTECTED_FIELDS)
    if unknown:
        raise ValueError(f"not a job field (see workers/state/jobs.py): {', '.join(unknown)}")


def _pairs(fields: Mapping[str, str | int | float]) -> list[str]:
    _check_writable(fields)
    return [part for name, value in fields.items() for part in (name, _encode(value))]


def _record(job: NewJob) -> list[str]:
    """The job's field, value pairs as enqueue writes them (the script adds state and times)."""
    if not 0 <= job.priority <= MAX_PRIORITY:
        raise ValueError(f"job {job.job_id}: priority must be 0..{MAX_PRIORITY}: {job.priority}")
    fields = {
        "job_id": job.job_id,
        "endpoint": job.endpoint,
        "request": job.request_json,
        "batch": job.batch,
        "name": job.name,
        "priority": str(job.priority),
        "group": job.group,
        "key_label": job.key_label,
        "callback_json": job.callback_json,
        "webhook_url": job.webhook_url,
    }
    return [part for name, value in fields.items() if value is not None for part in (name, value)]


@dataclass(frozen=True)
class LaneResult:
    """What one ``enqueue_lane`` call did: lines added, lines already there, name conflicts
    (0-based positions in the entries given)."""

    added: int
    present: int
    conflicts: list[int]


class JobStore:
    """Job records, their state machine and the per-batch counters, in one Redis.

    ``batch``, ``key_label`` and ``group`` are fixed at enqueue; the keys derived from them are
    read once per call and passed to the scripts.
    """

    def __init__(
        self,
        redis: redis.Redis[str],
        *,
        terminal_ttl_s: float = 7 * 86400,
        min_replicas: int = 0,
        replica_wait_ms: int = 500,
    ) -> None:
        if terminal_ttl_s <= 0:
            raise ValueError(f"terminal_ttl_s must be positive, got {terminal_ttl_s}")
        self._redis = redis
        self.min_replicas = min_replicas
        """Replicas that must hold a new job, a submit marker and BFL's answer before fluxq goes
        on (FLUXQ_REDIS_MIN_REPLICAS); 0: no wait."""
        self._replica_wait_ms = replica_wait_ms
        self._scripts = Scripts(redis)
        self._terminal_ttl_ms = max(1, int(terminal_ttl_s * 1000))
        self._placements: dict[str, tuple[str, str, str]] = {}
        """Job id -> (batch, key label, group), which never change for an id (ids are never
        reused): a move's keys come from here, not from one more read of the record."""
        self._placements_lock = threading.Lock()

    def _replicated(self, write: Callable[[Any], None], what: str) -> list[list[Any]]:
        """Make an idempotent ``write`` (commands queued on the pipeline it is given) and wait
        for ``min_replicas`` to hold it (WAIT counts its own connection's writes, so both go in
        one pipeline); the results of each try, WAIT's count left out.

        A shortfall means a slow replica or a master that is one no longer (paused past a
        failover, it answers until the Sentinels demote it, up to 10 s, and what it takes is
        lost): ``follow_master`` takes the next try to the master the Sentinels name now."""
        tries: list[list[Any]] = []
        acked = 0
        for _ in range(REPLICATED_TRIES):
            results, acked = self._write_and_wait(write)
            tries.append(results)
            if acked >= self.min_replicas:
                return tries
        raise ReplicaShortfall(
            f"{what}: written, but {acked} of {self.min_replicas} Redis replicas confirmed it in "
            f"{self._replica_wait_ms} ms, {REPLICATED_TRIES} times (FLUXQ_REDIS_MIN_REPLICAS): "
            "a failover now could lose it; make it again (the same ids are safe to resend)"
        )

    def _write_and_wait(self, write: Callable[[Any], None]) -> tuple[list[Any], int]:
        """One try of a write that must reach ``min_replicas``: its results and how many
        replicas held it. Too few: ``follow_master``, so a next try reaches the master the
        Sentinels name now."""
        pipe = self._redis.pipeline(transaction=False)
        write(pipe)
        pipe.wait(self.min_replicas, self._replica_wait_ms)
        *results, acked = pipe.execute()
        if int(acked) < self.min_replicas:
            follow_master(self._redis)
        return results, int(acked)

    @property
    def redis(self) -> redis.Redis[str]:
        """The client this store uses (for readers that need a little more, such as metrics)."""
        return self._redis

    def enqueue(self, job: NewJob, *, now_s: float) -> bool:
        """Create a queued job in its backlog; False (and nothing changes) when the id exists.

        NameTaken (an InvalidRequest naming ``name``) when another job of the batch holds the
        job's file name; nothing changes then either.
        """
        if self.min_replicas:
            tries = self._replicated(
                lambda pipe: self._enqueue(job, now_s, pipe), f"job {job.job_id}"
            )
            # A try that met a stale master was lost; one that found the job made it before.
            results = [int(result) for (result,) in tries]
            result = 1 if 1 in results else results[-1]
        else:
            result = int(self._enqueue(job, now_s, self._redis))
        if result == NAME_TAKEN:
            raise self._name_taken([job])
        return result == 1

    def enqueue_many(self, jobs: Iterable[NewJob], *, now_s: float) -> int:
        """Enqueue jobs in pipelined chunks (one script call each); returns how many were new.

        A job whose file name another job of its batch holds is left out; NameTaken names every
        such job once the others are in (enqueueing them again is then a no-op).
        """
        created = 0
        refused: list[NewJob] = []
        chunk: list[NewJob] = []
        for job in jobs:
            chunk.append(job)
            if len(chunk) == ENQUEUE_CHUNK:
                created += self._enqueue_chunk(chunk, now_s, refused)
                chunk = []
        created += self._enqueue_chunk(chunk, now_s, refused)
        if refused:
            raise self._name_taken(refused)
        return created

    def _enqueue_chunk(self, chunk: list[NewJob], now_s: float, refused: list[NewJob]) -> int:
        def write(pipe: Any) -> None:
            for job in chunk:
                self._enqueue(job, now_s, pipe)

        if not self.min_replicas:
            pipe = self._redis.pipeline(transaction=False)
            write(pipe)
            return _tally(chunk, pipe.execute(), refused)
        tries = self._replicated(write, f"{len(chunk)} jobs from {chunk[0].job_id}")
        # Per job: made by any try (1) beats found (0) beats a name held by another (-1).
        merged = [max(int(result) for result in results) for results in zip(*tries, strict=True)]
        return _tally(chunk, merged, refused)

    def _name_taken(self, jobs: list[NewJob]) -> NameTaken:
        errors = []
        for job in jobs:
            holder = self._redis.hget(keys.names(job.batch), name_key(job.name))
            errors.append(
                FieldError(
                    loc=("name",),
                    msg=f"job {job.job_id}: file name {safe_name(job.name)!r} of batch "
                    f"{job.batch!r} is held by job {holder}; names are unique per batch",
                )
            )
        return NameTaken("name already taken in its batch", errors=errors)

    def _enqueue(self, job: NewJob, now_s: float, client: Any) -> Any:
        return self._scripts.enqueue(
            keys=[
                keys.job(job.job_id),
                keys.backlog(job.key_label, job.group),
                keys.SEQ,
                keys.groups(job.key_label),
                keys.batch(job.batch),
                keys.BATCHES,
                keys.names(job.batch),
            ],
            args=[
                job.job_id,
                now_s,
                job.priority,
                job.group,
                job.batch,
                keys.EVENTS_CHANNEL,
                name_key(job.name),
                *_record(job),
            ],
            client=client,
        )

    def get(self, job_id: str) -> Job | None:
        raw: dict[str, str] = self._redis.hgetall(keys.job(job_id))
        if not raw:
            return None
        job = parse_job(job_id, raw)
        self._place(job_id, (job.batch, job.key_label, job.group))
        return job

    def transition(
        self,
        job_id: str,
        to: State,
        *,
        from_states: Collection[State] | None = None,
        now_s: float,
        fields: Mapping[str, str | int | float] | None = None,
        reason: str | None = None,
        clear: Collection[str] = (),
        replicated: bool = False,
        leaves: Sequence[str] = (),
    ) -> bool:
        """Move the job to ``to`` if it is in one of ``from_states`` (compare-and-set).

        ``from_states`` defaults to every state the transition table allows a move to ``to`` from;
        a move the table does not allow raises ValueError.

        Sets ``t_<to>``, the fields and the reason, moves the batch counters and publishes an
        event. A terminal move sets the record's TTL. A job is in its backlog exactly while it is
        queued (a cancel takes it out; a move to queued puts it back at its arrival place). Slots
        belong to the limiter: release one there (or use ``SlotLimiter.requeue_front``).
        The fields named in ``clear`` are removed in the same step. ``replicated``: held by
        ``min_replicas`` before this returns (ReplicaShortfall if never). ``leaves``: sets or
        sorted sets the job id is removed from with the move, in the same step (its slot leases,
        its save watch), so a failover never keeps the one without the other.
        """
        froms = sources(to) if from_states is None else tuple(State(s) for s in from_states)
        check_moves(froms, to)
        _check_writable(clear)
        pairs = _pairs(fields or {})
        found = self._record_keys(job_id)
        if found is None:
            return False
        record_keys = [*found, *leaves]
        ttl_ms = self._terminal_ttl_ms if to.terminal else 0
        args: list[str | int | float] = [job_id, now_s, to.value, ttl_ms]
        args += ["1" if reason is not None else "0", reason or "", keys.EVENTS_CHANNEL]
        args += [len(froms), *(state.value for state in froms), len(clear), *clear, *pairs]
        if not (replicated and self.min_replicas):
            return bool(self._scripts.transition(keys=record_keys, args=args))
        # Made again after a shortfall, a move found done is "not moved": any try that moved it
        # is the answer.
        tries = self._replicated(
            lambda pipe: self._scripts.transition(keys=record_keys, args=args, client=pipe),
            f"job {job_id} to {to.value}",
        )
        return any(bool(result) for (result,) in tries)

    def start_submit(self, job_id: str, *, now_s: float) -> tuple[int, int]:
        """Count a submit attempt and set the ``submitting_at`` marker, in one step, if the job
        is admitted and unmarked; returns the attempt, or 0 when it is not (missing, cancelled,
        or another delivery's POST is under way): then nothing is written and nothing is sent.

        With ``min_replicas``, the same connection then waits for that many replicas to hold
        the write; the second number is how many did (0 without). Too few: ``follow_master``,
        so the caller's next try reaches the master the Sentinels name now.
        """
        if not self.min_replicas:
            return int(self._scripts.start_submit(keys=[keys.job(job_id)], args=[now_s])), 0
        # One try only: made again, the script would find its own marker and send nothing.
        (attempt,), acked = self._write_and_wait(
            lambda pipe: self._scripts.start_submit(
                keys=[keys.job(job_id)], args=[now_s], client=pipe
            )
        )
        return int(attempt), acked

    def update_submitted(self, job_id: str, fields: Mapping[str, str | int | float]) -> None:
        """Set fields on a job the caller just read as submitted, with no existence check (a
        plain HSET: one command, not three). A submitted record never expires, and one that
        ended since gets a TTL that a write keeps, so no stray record can be made."""
        _check_writable(fields)
        if fields:
            encoded: dict[str | bytes, str] = {k: _encode(v) for k, v in fields.items()}
            self._redis.hset(keys.job(job_id), mapping=encoded)

    def update(self, job_id: str, fields: Mapping[str, str | int | float]) -> None:
        """Set fields on an existing job (a missing job is left missing)."""
        pairs = _pairs(fields)
        if pairs:
            self._scripts.if_exists(keys=[keys.job(job_id)], args=["HSET", *pairs])

    def clear_fields(self, job_id: str, *names: str) -> None:
        _check_writable(names)
        if names:
            self._scripts.if_exists(keys=[keys.job(job_id)], args=["HDEL", *names])

    def count(self, job_id: str, field: str) -> int:
        """A numeric field's value now (0 when it or the job is missing): one HGET."""
        value = self._redis.hget(keys.job(job_id), field)
        return int(value) if value else 0

    def incr(self, job_id: str, field: str, by: int = 1) -> int:
        """Add ``by`` to a numeric field and return it; KeyError when the job is missing."""
        _check_writable([field])
        value = self._scripts.if_exists(keys=[keys.job(job_id)], args=["HINCRBY", field, by])
        if value is None:
            raise KeyError(job_id)
        return int(value)

    def batch_counts(self, batch: str) -> dict[str, int]:
        """Jobs per state, plus "total" and "uncertain", from the batch's counters (no scan)."""
        raw: dict[str, str] = self._redis.hgetall(keys.batch(batch))
        names = [state.value for state in State] + ["total", "uncertain"]
        return {name: int(raw.get(name, 0)) for name in names}

    def enqueue_lane(
        self,
        *,
        label: str,
        group: str,
        batch: str,
        priority: int,
        entries: Sequence[str],
        now_s: float,
    ) -> LaneResult:
        """Append encoded batch lines to the batch's lane in one script call, each line once."""
        if not entries:
            return LaneResult(0, 0, [])
        lane_keys = [
            keys.lane(label, group, batch),
            keys.names(batch),
            keys.batch(batch),
            keys.BATCHES,
            keys.lanes(label, group),
            keys.groups(label),
            keys.SEQ,
        ]
        args = [now_s, batch, priority, group, keys.EVENTS_CHANNEL, *entries]
        if self.min_replicas:
            tries = self._replicated(
                lambda pipe: self._scripts.enqueue_lane(keys=lane_keys, args=args, client=pipe),
                f"{len(entries)} lines of batch {batch}",
            )
            # A try that met a stale master was lost; a later one finds its lines present: the
            # try that added most says what happened.
            results = [[int(part) for part in result] for (result,) in tries]
            added, present, _count, *positions = max(results, key=lambda result: result[0])
        else:
            result = self._scripts.enqueue_lane(keys=lane_keys, args=args)
            added, present, _count, *positions = (int(part) for part in result)
        return LaneResult(added, present, [position - 1 for position in positions])

    def cancel_lane(self, *, label: str, group: str, batch: str, now_s: float) -> int:
        """Cancel every waiting line of one lane of the batch at once; returns how many."""
        cancelled = self._scripts.cancel_lane(
            keys=[keys.lane(label, group, batch), keys.lanes(label, group), keys.batch(batch)],
            args=[batch, now_s, keys.EVENTS_CHANNEL],
        )
        return int(cancelled)

    def record_refused(
        self,
        job_id: str,
        *,
        batch: str,
        reason: str,
        now_s: float,
        fields: Mapping[str, str] | None = None,
    ) -> bool:
        """Record a refused request as a failed job; False when the id is taken already."""
        created = self._scripts.refuse(
            keys=[keys.job(job_id), keys.batch(batch), keys.BATCHES, keys.reasons(batch)],
            args=[
                job_id,
                now_s,
                batch,
                reason,
                reason_kind(reason),
                self._terminal_ttl_ms,
                keys.EVENTS_CHANNEL,
                *_pairs(fields or {}),
            ],
        )
        return bool(created)

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several records in one round trip, in the order asked (None for a missing one)."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        raws: list[dict[str, str]] = pipe.execute()
        return [
            parse_job(job_id, raw) if raw else None
            for job_id, raw in zip(job_ids, raws, strict=True)
        ]

    def retry(self, job: Job, *, lane_entry: str, lane_score: float, now_s: float) -> bool:
        """A new attempt of a failed job: a lane job as a fresh lane line (``lane_entry``), a
        one-by-one job back in its backlog with its attempt fields cleared."""
        moved = self._scripts.retry(
            keys=[
                keys.job(job.job_id),
                keys.batch(job.batch),
                keys.reasons(job.batch),
                keys.lane(job.key_label, job.group, job.batch),
                keys.lanes(job.key_label, job.group),
                keys.backlog(job.key_label, job.group),
            ],
            args=[
                job.job_id,
                now_s,
                lane_entry,
                reason_kind(job.reason or "unknown"),
                keys.EVENTS_CHANNEL,
                lane_score,
            ],
        )
        return bool(moved)

    def batch_record(self, batch: str) -> dict[str, str]:
        """The batch hash as stored: counters, settings and credits."""
        raw: dict[str, str] = self._redis.hgetall(keys.batch(batch))
        return raw

    def count_reason(self, batch: str, reason: str) -> None:
        """Count one failed job under the first clause of its reason (for batch status)."""
        self._redis.hincrby(keys.reasons(batch), reason_kind(reason), 1)

    def uncount_reason(self, batch: str, reason: str) -> None:
        """Take back ``count_reason`` for a job that did not fail after all (a late answer)."""
        key, kind = keys.reasons(batch), reason_kind(reason)
        if self._redis.hincrby(key, kind, -1) <= 0:
            self._redis.hdel(key, kind)

    def reasons(self, batch: str) -> dict[str, int]:
        raw: dict[str, str] = self._redis.hgetall(keys.reasons(batch))
        return {kind: int(count) for kind, count in raw.items()}

    def account(self, batch: str, *, committed: float = 0.0, spent: float = 0.0) -> None:
        """Move a batch's credits: ``committed`` (admitted, not yet sent) and ``spent``."""
        pipe = self._redis.pipeline(transaction=True)
        if committed:
            pipe.hincrbyfloat(keys.batch(batch), "committed", committed)
        if spent:
            pipe.hincrbyfloat(keys.batch(batch), "spent", spent)
        pipe.execute()

    def mark_uncertain(self, job_id: str) -> None:
        """Flag a job whose submit may have created a BFL task unseen; counted once per job."""
        record_keys = self._record_keys(job_id)
        if record_keys is not None:
            self._scripts.mark_uncertain(keys=record_keys[:2], args=[])

    def watch_save(self, job_id: str, label: str, *, until_s: float) -> None:
        """Ask the sweep to re-send this job's save unless it ends before ``until_s``."""
        self._redis.zadd(keys.saves(label), {job_id: until_s})

    def unwatch_save(self, job_id: str, label: str) -> None:
        self._redis.zrem(keys.saves(label), job_id)

    def saves_due(self, label: str, *, now_s: float, limit: int = 1000) -> list[str]:
        """Ready jobs whose save did not end in time (its worker died, most likely)."""
        due: list[str] = self._redis.zrangebyscore(
            keys.saves(label), "-inf", now_s, start=0, num=limit
        )
        return due

    def batches(self) -> list[str]:
        """Every batch name, oldest first."""
        names: list[str] = self._redis.zrange(keys.BATCHES, 0, -1)
        return names

    def jobs_in_state(self, batch: str, state: State, limit: int) -> list[str]:
        """Up to ``limit`` ids of the batch's jobs in ``state``.

        O(all job records): it SCANs every job hash. For admin tools only, never a hot path.
        """
        found: list[str] = []
        prefix_len = len(keys.job(""))
        cursor = 0
        while len(found) < limit:
            cursor, names = self._redis.scan(cursor, match=keys.job("*"), count=1000)
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.hmget(name, "batch", "state")
            for name, (job_batch, job_state) in zip(names, pipe.execute(), strict=True):
                if job_batch == batch and job_state == state.value and len(found) < limit:
                    found.append(name[prefix_len:])
            if cursor == 0:
                break
        return found

    def _record_keys(self, job_id: str) -> list[str] | None:
        """The job hash, batch counters and backlog keys of an existing job, else None. Known
        from an earlier read of the job (``get``) when there was one; a job gone since is
        found missing by the script that uses them."""
        job_key = keys.job(job_id)
        with self._placements_lock:
            placement = self._placements.get(job_id)
        if placement is None:
            batch, label, group = self._redis.hmget(job_key, "batch", "key_label", "group")
            if batch is None or label is None or group is None:
                return None
            placement = (batch, label, group)
            self._place(job_id, placement)
        batch, label, group = placement
        return [job_key, keys.batch(batch), keys.backlog(label, group)]

    def _place(self, job_id: str, placement: tuple[str, str, str]) -> None:
        with self._placements_lock:
            if len(self._placements) >= PLACEMENTS_KEPT:
                del self._placements[next(iter(self._placements))]  # the oldest
            self._placements[job_id] = placement
