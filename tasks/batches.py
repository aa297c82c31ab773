"""Batches: a file's lines into lanes at bulk speed, and everything done to a batch afterwards.

A batch line waits in its batch's lane as one compact entry (``tasks/batchfile.Entry``): no job
hash, no backlog member, until admission gives it a slot (``lua/admit.lua``); its job id is then
``{batch}.{line_id}``. Lines are added once per line id (a re-run adds only what is missing), in
chunks of one script call, and admission runs after each chunk so work starts while a large file
is still going in. Status reads counters only (``fluxq:batch:{b}``), whatever the batch's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fluxq.config.catalog import Catalog, get_endpoint
from fluxq.tasks import lifecycle
from fluxq.tasks.admission import admit_and_dispatch
from fluxq.tasks.batchfile import Entry
from fluxq.workers.runtime import Runtime
from fluxq.workers.state import keys
from fluxq.workers.state.batches import DEFAULT_BATCH_PRIORITY, BatchStatus, read_batch_status
from fluxq.workers.state.jobs import Job, State
from fluxq.workers.state.store import backlog_score

LANE_CHUNK = 1000
"""Lines per script call: large enough that round trips do not count, small enough that one call
never holds Redis for long (about a millisecond)."""

SCAN_COUNT = 2000
"""Names per HSCAN step when a command must visit every job of a batch (cancel, retry, report)."""


@dataclass
class EnqueueResult:
    """What adding lines did: added now, already there from an earlier run, and conflicts (a line
    whose file name another line of the batch holds)."""

    added: int = 0
    present: int = 0
    conflicts: list[Entry] = field(default_factory=list)


def group_of(endpoint: str, catalog: Catalog) -> str:
    """The cap group (the limiter's name of a cap class) of an endpoint of ``catalog``."""
    return get_endpoint(endpoint, catalog=catalog).cap_group or keys.DEFAULT_GROUP


def set_budget(rt: Runtime, batch: str, budget: float | None) -> None:
    """Set (not add to) the batch's credit budget; None leaves it as it is."""
    if budget is not None:
        rt.redis.hset(keys.batch(batch), "budget", repr(float(budget)))


def set_output(rt: Runtime, batch: str, out: Path | None) -> None:
    """Send the batch's files to ``out`` (absolute; on the workers' machines) instead of
    ``<output_dir>/<batch>``; None leaves it as it is."""
    if out is not None:
        rt.redis.hset(keys.batch(batch), "out", str(out))


def enqueue_entries(
    rt: Runtime,
    batch: str,
    entries: Iterable[Entry],
    *,
    priority: int = DEFAULT_BATCH_PRIORITY,
    budget: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnqueueResult:
    """Add validated lines to the batch's lanes (one per cap group), admitting as it goes."""
    set_budget(rt, batch, budget)
    result = EnqueueResult()
    pending: dict[str, list[Entry]] = {}
    catalog = rt.settings.catalog
    seen = 0
    for entry in entries:
        chunk = pending.setdefault(group_of(entry.endpoint, catalog), [])
        chunk.append(entry)
        seen += 1
        if len(chunk) >= LANE_CHUNK:
            _flush(rt, batch, priority, pending, result)
            if progress is not None:
                progress(seen)
    _flush(rt, batch, priority, pending, result)
    if progress is not None:
        progress(seen)
    return result


def _flush(
    rt: Runtime,
    batch: str,
    priority: int,
    pending: dict[str, list[Entry]],
    result: EnqueueResult,
) -> None:
    for group, chunk in pending.items():
        if not chunk:
            continue
        done = rt.store.enqueue_lane(
            label=rt.label,
            group=group,
            batch=batch,
            priority=priority,
            entries=[entry.encode() for entry in chunk],
            now_s=rt.clock(),
        )
        result.added += done.added
        result.present += done.present
        result.conflicts.extend(chunk[i] for i in done.conflicts)
        chunk.clear()
    admit_and_dispatch(rt)


# --- watching ------------------------------------------------------------------------------


def batch_status(rt: Runtime, batch: str, *, now_s: float | None = None) -> BatchStatus | None:
    """The batch's counters, credits and failure reasons; None when there is no such batch."""
    return read_batch_status(rt.store, batch, now_s=rt.clock() if now_s is None else now_s)


def list_batches(rt: Runtime) -> list[BatchStatus]:
    """Every batch's status, oldest first."""
    found = (batch_status(rt, batch) for batch in rt.store.batches())
    return [status for status in found if status is not None]


# --- acting --------------------------------------------------------------------------------


def _groups(rt: Runtime) -> list[str]:
    groups: set[str] = rt.redis.smembers(keys.groups(rt.label))
    return sorted(groups | {keys.DEFAULT_GROUP})


def _job_ids(rt: Runtime, batch: str) -> Iterator[str]:
    """Every job id of the batch that may have a record: for each name, the id it maps to (a job
    sent one by one) and ``{batch}.{line id}`` (a lane line)."""
    for _stem, holder in rt.redis.hscan_iter(keys.names(batch), count=SCAN_COUNT):
        yield holder
        yield f"{batch}.{holder}"


def _jobs(rt: Runtime, batch: str) -> Iterator[Job]:
    """Every existing job record of the batch (lines still in a lane have none), in SCAN order."""
    ids: list[str] = []
    for job_id in _job_ids(rt, batch):
        ids.append(job_id)
        if len(ids) >= SCAN_COUNT:
            yield from _read(rt, ids, batch)
            ids = []
    yield from _read(rt, ids, batch)


def _read(rt: Runtime, ids: list[str], batch: str) -> Iterator[Job]:
    for job in rt.store.get_many(ids):
        if job is not None and job.batch == batch:
            yield job


@dataclass(frozen=True)
class CancelResult:
    lines: int
    jobs: int


def cancel_batch(rt: Runtime, batch: str) -> CancelResult:
    """Cancel every waiting job of the batch now; jobs already sent finish and are saved.

    Lane lines (no record yet) go at once, per lane; queued jobs with a record are cancelled one
    by one. A second cancel finds nothing left to cancel.
    """
    if not rt.redis.exists(keys.batch(batch)):
        return CancelResult(0, 0)
    rt.redis.hset(keys.batch(batch), "paused", "cancelled")
    now = rt.clock()
    lines = sum(
        rt.store.cancel_lane(label=rt.label, group=group, batch=batch, now_s=now)
        for group in _groups(rt)
    )
    jobs = 0
    if rt.store.batch_counts(batch)[State.QUEUED.value] <= 0:
        return CancelResult(lines, jobs)  # nothing queued with a record: no need to visit jobs
    for job in _jobs(rt, batch):
        if job.state is State.QUEUED and lifecycle.end(
            rt, job, State.CANCELLED, reason="cancelled with its batch"
        ):
            jobs += 1
    return CancelResult(lines, jobs)


class BatchBusy(Exception):
    """A batch that still has jobs under way cannot be forgotten."""


def forget_batch(rt: Runtime, batch: str) -> int:
    """Delete a finished batch's bookkeeping (names, counters, reasons): it then takes no Redis
    beyond its job records, which expire on their own (``FLUXQ_JOB_TTL_S``). Returns how many
    names were dropped. BatchBusy while any job is queued, admitted, submitted or ready.

    Forgetting lets the batch's names be used again: submitting the same file afterwards skips
    lines whose job record still exists, but once those records have expired it runs (and pays
    for) every line again.
    """
    status = batch_status(rt, batch)
    if status is None:
        return 0
    if status.waiting:
        raise BatchBusy(f"batch {batch} has {status.waiting} jobs under way")
    names = int(rt.redis.hlen(keys.names(batch)))
    pipe = rt.redis.pipeline(transaction=True)
    for group in _groups(rt):
        pipe.zrem(keys.lanes(rt.label, group), batch)
        pipe.unlink(keys.lane(rt.label, group, batch))
    pipe.unlink(keys.names(batch), keys.batch(batch), keys.reasons(batch))
    pipe.zrem(keys.BATCHES, batch)
    pipe.execute()
    return names


def resume_batch(rt: Runtime, batch: str, *, more_budget: float | None = None) -> None:
    """Lift a budget pause (adding ``more_budget`` credits first) and put the lanes back."""
    key = keys.batch(batch)
    if more_budget is not None and rt.redis.hexists(key, "budget"):
        rt.redis.hincrbyfloat(key, "budget", more_budget)  # a batch without one stays unlimited
    if rt.redis.hget(key, "paused") == "cancelled":
        return
    rt.redis.hdel(key, "paused")
    priority, seq = rt.redis.hmget(key, "priority", "seq")
    score = backlog_score(int(priority or DEFAULT_BATCH_PRIORITY), int(seq or 0))
    for group in _groups(rt):
        if rt.redis.llen(keys.lane(rt.label, group, batch)):
            rt.redis.zadd(keys.lanes(rt.label, group), {batch: score})
    admit_and_dispatch(rt)


def retry_batch(
    rt: Runtime,
    batch: str,
    *,
    failed: bool = True,
    uncertain: bool = False,
    reason: str | None = None,
) -> int:
    """New attempts of the batch's chosen failed jobs; returns how many.

    ``failed`` picks failures BFL or fluxq decided (moderation, errors, timeouts), ``uncertain``
    those whose submit may have been billed already (retrying them may pay twice), ``reason``
    narrows either to reasons containing that text. A lane job goes back to its lane as a fresh
    line (so the batch's budget applies); a job sent one by one goes back to its backlog.
    """
    chosen = [
        job
        for job in _jobs(rt, batch)
        if job.state is State.FAILED
        and ((uncertain and job.uncertain) or (failed and not job.uncertain))
        and (reason is None or reason.lower() in (job.reason or "").lower())
    ]
    raw = rt.store.batch_record(batch)
    score = backlog_score(int(raw.get("priority", DEFAULT_BATCH_PRIORITY)), int(raw.get("seq", 0)))
    for job in chosen:
        entry = _lane_entry(batch, job) if job.lane else ""
        rt.store.retry(job, lane_entry=entry, lane_score=score, now_s=rt.clock())
    if chosen:
        admit_and_dispatch(rt)
    return len(chosen)


def _lane_entry(batch: str, job: Job) -> str:
    """The lane line a lane job came from, rebuilt from its record."""
    line_id = job.job_id.removeprefix(f"{batch}.")
    request = json.dumps(job.request, separators=(",", ":"), ensure_ascii=False)
    return Entry(0, line_id, job.name, job.endpoint, job.est or 0.0, request).encode()


@dataclass(frozen=True)
class ReportRow:
    line_id: str
    job_id: str
    state: str
    file: str
    seed: str
    cost: str
    reason: str

    FIELDS = ("line_id", "job_id", "state", "file", "seed", "cost", "reason")


def report_rows(rt: Runtime, batch: str) -> Iterator[ReportRow]:
    """One row per line of the batch, with what became of it (lines still waiting included)."""
    cancelled = rt.redis.hget(keys.batch(batch), "paused") == "cancelled"
    pending: list[tuple[str, str]] = []
    for _stem, holder in rt.redis.hscan_iter(keys.names(batch), count=SCAN_COUNT):
        pending.append((holder, holder))
        pending.append((holder, f"{batch}.{holder}"))
        if len(pending) >= SCAN_COUNT:
            yield from _rows(rt, pending, cancelled)
            pending = []
    yield from _rows(rt, pending, cancelled)


def _rows(rt: Runtime, pairs: list[tuple[str, str]], cancelled: bool) -> Iterator[ReportRow]:
    jobs = rt.store.get_many([job_id for _, job_id in pairs])
    by_line: dict[str, Job | None] = {}
    for (line_id, _job_id), job in zip(pairs, jobs, strict=True):
        if job is not None or line_id not in by_line:
            by_line[line_id] = job if job is not None else by_line.get(line_id)
    for line_id, job in by_line.items():
        if job is None:
            state = State.CANCELLED.value if cancelled else State.QUEUED.value
            yield ReportRow(line_id, "", state, "", "", "", "")
            continue
        yield ReportRow(
            line_id=line_id if job.lane else job.name,
            job_id=job.job_id,
            state=job.state.value,
            file=job.path or "",
            seed="" if job.seed is None else str(job.seed),
            cost="" if job.cost is None else f"{job.cost:g}",
            reason=job.reason or "",
        )


def cancel_job(rt: Runtime, job_id: str) -> State | None:
    """Cancel one job while it is queued; returns its state after, None if unknown.

    An admitted job may be in its POST already, and a job sent to BFL runs to its end (BFL has no
    cancel): neither is cancelled; it finishes and is saved.
    """
    job = rt.store.get(job_id)
    if job is None:
        return None
    if job.state is State.QUEUED:
        lifecycle.end(rt, job, State.CANCELLED, reason="cancelled")
    current = rt.store.get(job_id)
    return None if current is None else current.state
