"""How ``fluxq batch status`` shows a batch: pure text and JSON, no rich, typer or Redis client.

Shared by the command (``fluxq.cli.batch``) and its fast path (``fluxq.cli.fast_status``), so
both print the same bytes for the same batch. The key's slots (tasks at BFL apart from slots held
for doubtful POSTs) and the one-line reason a wait is blocked are made here too, from replies to
the commands ``slot_reads`` and ``holder_reads`` name, so ``fluxq status``, the waits
(``fluxq.cli.waits``) and ``GET /v1/batches/{name}`` say the same thing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fluxq.workers.state import keys
from fluxq.workers.state.batches import BatchStatus
from fluxq.workers.state.cap_rules import PAUSE_TEXT, PauseKind, aimd_effective_cap
from fluxq.workers.state.jobs import State

STATE_ORDER = (*(state.value for state in State), "uncertain")
"""The counts of a status line, in this order."""


def no_batch_message(name: str) -> str:
    """What a command says when there is no batch ``name``."""
    return f"no batch named {name} (`fluxq batch list` shows every batch)"


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def credits_text(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def status_json(status: BatchStatus, view: KeyView | None = None) -> dict[str, Any]:
    """The status as JSON; with ``view``, also the key's ``slots`` and the ``wait_reason``."""
    data = dataclasses.asdict(status)
    data["waiting"] = status.waiting
    data["finished"] = status.finished
    if view is not None:
        data["slots"] = slots_json(view.slots)
        data["wait_reason"] = view.reason
    return data


def status_lines(status: BatchStatus, view: KeyView | None = None) -> list[str]:
    """The status as text; with ``view`` (while the batch is not finished), also the key's slots
    and, when it is blocked, why."""
    name, counts = status.batch, status.counts
    lines = [
        f"batch {name}: {status.total:,} lines, priority {status.priority}",
        "  " + "  ".join(f"{state} {counts.get(state, 0):,}" for state in STATE_ORDER),
    ]
    if status.images_per_minute is not None:
        eta = "—" if status.eta_s is None or status.finished else duration_text(status.eta_s)
        lines.append(f"  {status.images_per_minute:,.1f} images/min, ETA {eta}")
    spent, committed = credits_text(status.spent), credits_text(status.committed)
    money = f"  credits: spent {spent}, committed {committed}"
    if status.budget is not None:
        money += f", budget {credits_text(status.budget)}"
    lines.append(money)
    if status.paused == "budget":
        lines.append(f"  paused: budget — `fluxq batch resume {name} --budget MORE`")
    elif status.paused == "cancelled":
        lines.append("  cancelled (jobs already sent finish and are saved)")
    elif status.paused:
        lines.append(f"  paused: {status.paused}")
    if view is not None and not status.finished:
        lines.append(f"  {slots_line(view.slots)}")
        if view.reason is not None:
            lines.append(f"  waiting: {view.reason}")
    if status.reasons:
        lines.append("  failures by reason:")
        lines += [f"    {count:,}  {reason}" for reason, count in status.reasons.items()]
    return lines


# --- a key's slots, and why a wait does not move -----------------------------------------------
#
# Read with the same commands by the command line (redis-py, ``fluxq.cli.waits``), the fast path
# (a plain socket) and the API, and turned into text here, so all of them say the same thing.

CAP_FIELDS = (
    "paused_until",
    "pause_kind",
    "pause_detail",
    "reduced_to",
    "reduced_at",
    "refused_at",
    "refused_detail",
)
"""The fields of ``fluxq:cap:{k}`` read for a key's slots."""

MAX_HOLDERS = 1000
"""Lease holders read at most: the cap, probes and lapsed leases stay far below it."""

SHOWN_BATCHES = 3
"""Batches named in a reason for the slots their jobs hold (the most slots first)."""

RECENT_REFUSAL_S = 60.0
"""A refused POST this recent explains jobs that hold a slot and are not at BFL yet."""


@dataclass(frozen=True)
class KeySlots:
    """One key's slots now: leases held (``fluxq:slots:{k}``), of them the holds for doubtful
    POSTs (``fluxq:doubt:{k}``), the AIMD cap, a pause in force and the last refused POST
    (``fluxq:cap:{k}``), and the holders' jobs (``holder_reads``) once read."""

    key_cap: int
    effective_cap: int
    """The AIMD cap: it limits the tasks known to run (``SlotLimiter.effective_cap``)."""
    held: int
    doubtful: int
    doubtful_next_end: float | None
    """When the first hold for a doubtful POST ends (s since the epoch)."""
    doubtful_until: float | None
    """When the last one ends."""
    pause_kind: str | None
    pause_detail: str
    pause_until: float | None
    next_cap_step: float | None
    """After a 429: when the effective cap regains a slot (None when it is the key's cap)."""
    refused_at: float | None
    refused_detail: str
    holders: tuple[str, ...]
    """The jobs holding a lease that is not a doubtful hold (at most ``MAX_HOLDERS``)."""
    sending: int = 0
    """Holders whose POST is being sent or tried again (admitted): not at BFL yet."""
    stale: int = 0
    """Holders whose job no longer needs the slot (gone, or ended): the sweep frees them."""
    by_batch: tuple[tuple[str, int], ...] = ()
    """Slots held by each batch's jobs, doubtful holds aside (the most first)."""

    @property
    def at_bfl(self) -> int:
        """Tasks running at BFL: leases held minus the doubtful holds, the POSTs being sent
        and the leases the sweep has yet to free."""
        return max(0, self.held - self.doubtful - self.sending - self.stale)

    @property
    def allowed(self) -> int:
        """Leases admission allows now: the AIMD cap plus the doubtful holds, within the cap."""
        return min(self.key_cap, self.effective_cap + self.doubtful)

    @property
    def full(self) -> bool:
        return self.held >= self.allowed

    @property
    def pause_text(self) -> str | None:
        if self.pause_kind is None:
            return None
        known = self.pause_kind in PauseKind.__members__.values()
        text = PAUSE_TEXT[PauseKind(self.pause_kind)] if known else f"paused ({self.pause_kind})"
        return f"{text}: {self.pause_detail}" if self.pause_detail else text


@dataclass(frozen=True)
class KeyView:
    """A key's slots and, when a wait is blocked, why (one line), as a status shows them."""

    slots: KeySlots
    reason: str | None


def slot_reads(label: str) -> list[tuple[str, ...]]:
    """The commands that read a key's slots in one round trip (``key_slots_from``)."""
    last = str(MAX_HOLDERS - 1)
    return [
        ("ZCARD", keys.slots(label)),
        ("ZRANGE", keys.slots(label), "0", last),
        ("ZCARD", keys.doubt(label)),
        ("ZRANGE", keys.doubt(label), "0", last, "WITHSCORES"),
        ("ZRANGE", keys.doubt(label), "-1", "-1", "WITHSCORES"),
        ("HMGET", keys.cap_state(label), *CAP_FIELDS),
    ]


def holder_reads(slots: KeySlots) -> list[tuple[str, ...]]:
    """The commands that read the state and batch of each job holding a slot (``with_holders``);
    none when no job holds one."""
    return [("HMGET", keys.job(job_id), "state", "batch") for job_id in slots.holders]


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"not a string reply: {type(value).__name__}")


def _items(reply: object) -> list[object]:
    """A list reply, flattened (RESP3 gives WITHSCORES as pairs)."""
    if not isinstance(reply, list):
        raise ValueError("not a list reply")
    flat: list[object] = []
    for item in reply:
        flat.extend(item if isinstance(item, list | tuple) else [item])
    return flat


def _scored(reply: object) -> list[tuple[str, float]]:
    items = [_text(item) or "" for item in _items(reply)]
    return [(items[i], float(items[i + 1])) for i in range(0, len(items) - 1, 2)]


def _optional_float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def key_slots_from(
    replies: Sequence[object], *, key_cap: int, aimd_interval_s: float, now_s: float
) -> KeySlots:
    """The replies to ``slot_reads`` as ``KeySlots`` (holders not read yet), with the rules of
    ``aimd_effective_cap`` and ``pause_in_force`` (``workers.state.limiter``) at ``now_s``."""
    held, members, doubt_count, doubt_head, doubt_tail, cap_state = replies
    doubt = _scored(doubt_head)
    last = _scored(doubt_tail)
    doubtful_ids = {job_id for job_id, _ in doubt}
    values = [_text(value) for value in _items(cap_state)]
    state = dict(zip(CAP_FIELDS, values, strict=True))
    effective, next_step = effective_cap_and_step(key_cap, state, now_s, aimd_interval_s)
    kind, detail, until = _pause(state, now_s)
    holders = [_text(member) or "" for member in _items(members)]
    return KeySlots(
        key_cap=key_cap,
        effective_cap=effective,
        held=int(_text(held) or 0),
        doubtful=int(_text(doubt_count) or 0),
        doubtful_next_end=doubt[0][1] if doubt else None,
        doubtful_until=last[0][1] if last else None,
        pause_kind=kind,
        pause_detail=detail,
        pause_until=until,
        next_cap_step=next_step,
        refused_at=_optional_float(state["refused_at"]),
        refused_detail=state["refused_detail"] or "",
        holders=tuple(job_id for job_id in holders if job_id not in doubtful_ids),
    )


def with_holders(slots: KeySlots, replies: Sequence[object]) -> KeySlots:
    """``slots`` with its holders told apart, from the replies to ``holder_reads``."""
    sending = stale = 0
    by_batch: dict[str, int] = {}
    for reply in replies:
        state, batch = (_text(value) for value in _items(reply))
        if state == State.ADMITTED.value:
            sending += 1
        elif state != State.SUBMITTED.value:
            stale += 1
            continue
        if batch is not None:
            by_batch[batch] = by_batch.get(batch, 0) + 1
    ranked = tuple(sorted(by_batch.items(), key=lambda kv: (-kv[1], kv[0])))
    return dataclasses.replace(slots, sending=sending, stale=stale, by_batch=ranked)


def effective_cap_and_step(
    key_cap: int, state: Mapping[str, str | None], now_s: float, interval_s: float
) -> tuple[int, float | None]:
    """``aimd_effective_cap``, and when the cut cap regains its next slot."""
    reduced_to = state.get("reduced_to")
    if reduced_to is None:
        return key_cap, None
    reduced_at = _optional_float(state.get("reduced_at")) or 0.0
    effective = aimd_effective_cap(key_cap, int(reduced_to), reduced_at, now_s, interval_s)
    if effective >= key_cap:
        return key_cap, None
    steps = math.floor(max(0.0, now_s - reduced_at) / interval_s)
    return effective, reduced_at + (steps + 1) * interval_s


def _pause(state: Mapping[str, str | None], now_s: float) -> tuple[str | None, str, float | None]:
    """``pause_in_force``: (kind, detail, until), kind None when admission is open."""
    kind = state.get("pause_kind")
    if kind is None:
        return None, "", None
    until = _optional_float(state.get("paused_until"))
    if until is not None and until <= now_s:
        return None, "", None
    return kind, state.get("pause_detail") or "", until


def clock(at_s: float) -> str:
    """A time as the local clock shows it; with the date when it is not within 12 h of now."""
    shape = "%H:%M:%S" if abs(at_s - time.time()) < 12 * 3600 else "%Y-%m-%d %H:%M:%S"
    return time.strftime(shape, time.localtime(at_s))


def _holds(slots: KeySlots) -> list[str]:
    """What holds the key's slots, in words: at BFL apart from the doubtful holds."""
    parts = [f"{slots.at_bfl:,} at BFL"]
    if slots.sending:
        parts.append(f"{slots.sending:,} being sent")
    if slots.doubtful:
        parts.append(f"{slots.doubtful:,} held for doubtful POSTs{_until(slots)}")
    if slots.stale:
        parts.append(f"{slots.stale:,} ended, freed by the next sweep")
    return parts


def slots_line(slots: KeySlots) -> str:
    """The key's slots in a few words: at BFL apart from the holds for doubtful POSTs."""
    cap = f"cap {slots.key_cap}"
    if slots.allowed < slots.key_cap:
        cap += f", {slots.allowed} allowed now after a 429"
    free = max(0, slots.allowed - slots.held)
    return f"key slots: {', '.join(_holds(slots))}, {free:,} free ({cap})"


def _until(slots: KeySlots) -> str:
    return "" if slots.doubtful_until is None else f" until {clock(slots.doubtful_until)}"


def pause_reason(slots: KeySlots) -> str | None:
    """Why admission waits when the key is paused, and when it goes on; None when it is not."""
    text = slots.pause_text
    if text is None:
        return None
    when = None if slots.pause_until is None else clock(slots.pause_until)
    if slots.pause_kind == "out_of_credits":
        return f"admission is paused: {text}; it goes on when credits return, or `fluxq resume`"
    if slots.pause_kind == "not_authorised":
        return f"admission is paused: {text}; fix BFL_API_KEY for the workers, then `fluxq resume`"
    if when is None:
        return f"admission is paused: {text}; `fluxq resume` goes on"
    return f"admission is paused: {text}; it goes on at {when}"


def blocked_reason(slots: KeySlots, *, now_s: float, whose: str = "") -> str | None:
    """Why admission takes nothing now, in one line with when it expects to take a job again:
    a pause, or every slot admission allows taken (by what, for which batches). None when
    admission has room. ``whose``: who holds the slots, e.g. "other batches' jobs" when none of
    them is the waiting batch's (default: "batches")."""
    paused = pause_reason(slots)
    if paused is not None:
        return paused
    if not slots.full:
        return None
    if slots.allowed < slots.key_cap:
        head = f"all {slots.allowed} slots allowed now taken (a 429 cut the cap of {slots.key_cap})"
    else:
        head = f"all {slots.allowed} slots taken"
    text = f"{head}: {', '.join(_holds(slots))}"
    if slots.by_batch:
        text += f"; held by {whose or 'batches'}: {_named(slots.by_batch)}"
    refused = _refused(slots, now_s)
    if refused:
        text += f"; {refused}"
    return f"{text}; {_resumes(slots)}"


def _named(by_batch: Sequence[tuple[str, int]]) -> str:
    shown = [f"{batch} {count:,}" for batch, count in by_batch[:SHOWN_BATCHES]]
    more = len(by_batch) - SHOWN_BATCHES
    if more > 0:
        shown.append(f"{more} more batches")
    return ", ".join(shown)


def _refused(slots: KeySlots, now_s: float) -> str:
    """A recent refused POST, when jobs holding a slot are not at BFL yet: BFL turns them away."""
    if not slots.sending or slots.refused_at is None:
        return ""
    if now_s - slots.refused_at > RECENT_REFUSAL_S:
        return ""
    detail = f" ({slots.refused_detail})" if slots.refused_detail else ""
    when = clock(slots.refused_at)
    return f"BFL refused a submit at {when}{detail}: the POSTs being sent try again by themselves"


def _resumes(slots: KeySlots) -> str:
    """When a slot frees for sure: a doubtful hold's end frees one only while the holds count
    beyond the AIMD cap (admission allows cut cap + holds), a step of the cut cap only while the
    holds do not fill the key's cap; a task finishing at BFL always does, at BFL's pace."""
    over = slots.effective_cap + slots.doubtful - slots.key_cap
    at: float | None = None
    if slots.doubtful_next_end is not None and over > 0:
        at = slots.doubtful_next_end
    elif slots.next_cap_step is not None and over < 0:
        at = slots.next_cap_step
    elif slots.doubtful_next_end is not None and slots.next_cap_step is not None:
        at = max(slots.doubtful_next_end, slots.next_cap_step)
    running = slots.held > slots.doubtful
    if at is None:
        event = "a task at BFL finishes" if running else "a slot is freed"
        return f"admission resumes when {event}"
    text = f"admission resumes by {clock(at)}"
    return text + (", sooner if a task at BFL finishes" if running else "")


def batch_blocked(status: BatchStatus, slots: KeySlots) -> bool:
    """The batch has lines waiting, none of its jobs holds a slot, and admission takes nothing
    (a pause, or every slot taken): it cannot move until that changes."""
    counts = status.counts
    own = counts.get(State.ADMITTED.value, 0) + counts.get(State.SUBMITTED.value, 0)
    if status.paused or counts.get(State.QUEUED.value, 0) == 0 or own:
        return False
    return slots.pause_kind is not None or slots.full


def batch_reason(status: BatchStatus, slots: KeySlots, *, now_s: float) -> str | None:
    """Why the batch does not move, in one line; None when it is not blocked."""
    if not batch_blocked(status, slots):
        return None
    return blocked_reason(slots, now_s=now_s, whose="other batches' jobs")


def slots_json(slots: KeySlots) -> dict[str, Any]:
    return {
        "key_cap": slots.key_cap,
        "effective_cap": slots.effective_cap,
        "allowed": slots.allowed,
        "held": slots.held,
        "at_bfl": slots.at_bfl,
        "sending": slots.sending,
        "doubtful": slots.doubtful,
        "doubtful_next_end": slots.doubtful_next_end,
        "doubtful_until": slots.doubtful_until,
        "stale": slots.stale,
        "by_batch": dict(slots.by_batch),
        "pause": slots.pause_text,
        "pause_until": slots.pause_until,
    }
