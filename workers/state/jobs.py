"""A job's states, the table of moves between them, and every field a job record may hold.

The store (``store.py``) enforces the table; ``tasks/lifecycle.py`` is the only caller that moves
a job, so "how a job ends" is written once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from fluxq.workers.state import keys

MAX_PRIORITY = 9
"""The highest priority; priorities run 0..MAX_PRIORITY and a higher one is admitted sooner."""

DEFAULT_PRIORITY = 5
"""The priority of a job that names none."""


class State(StrEnum):
    """A job's place in its life; a job reaches exactly one terminal state."""

    QUEUED = "queued"
    ADMITTED = "admitted"
    SUBMITTED = "submitted"
    READY = "ready"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for done, failed and cancelled: the states a job's life ends in."""
        return self in (State.DONE, State.FAILED, State.CANCELLED)

    @property
    def holds_slot(self) -> bool:
        """True while the job holds a slot lease: from admission until BFL says it finished."""
        return self in (State.ADMITTED, State.SUBMITTED)


TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType(
    {
        # Admitted by the admit script; cancelled by the user; failed when never admissible.
        State.QUEUED: frozenset({State.ADMITTED, State.CANCELLED, State.FAILED}),
        # Back to queued after a 429/402/403 or a lapsed lease; submitted once BFL answered.
        # Never cancelled: a POST may be in flight, and a task BFL runs is paid for: it finishes.
        State.ADMITTED: frozenset({State.QUEUED, State.SUBMITTED, State.FAILED}),
        # Ready when BFL says so; failed on any other terminal status or a deadline.
        State.SUBMITTED: frozenset({State.READY, State.FAILED}),
        State.READY: frozenset({State.DONE, State.FAILED}),
        State.DONE: frozenset(),
        # The ways out of a terminal state: a job failed as "uncertain" (its POST's answer was
        # lost) whose answer then arrives after all is recovered: BFL made the image, we fetch it
        # (``tasks.lifecycle.recover_uncertain``, only for jobs flagged uncertain); and a failed
        # job retried by a person (``fluxq batch retry``, ``lua/retry.lua``) waits again.
        State.FAILED: frozenset({State.SUBMITTED, State.QUEUED}),
        State.CANCELLED: frozenset(),
    }
)
"""Every allowed move of a job's state; anything else is refused by the store."""


def sources(to: State) -> tuple[State, ...]:
    """The states a job may move to ``to`` from, in declaration order."""
    return tuple(state for state in State if to in TRANSITIONS[state])


def check_moves(from_states: Iterable[State], to: State) -> None:
    """Raise ValueError naming a move the table does not allow."""
    bad = [state.value for state in from_states if to not in TRANSITIONS[state]]
    if bad:
        raise ValueError(f"moves not in the transition table: {', '.join(bad)} -> {to.value}")


class JobField(StrEnum):
    """Every field of a job hash (``fluxq:job:{id}``) besides ``t_<state>`` timestamps."""

    # Fixed at enqueue.
    JOB_ID = "job_id"
    ENDPOINT = "endpoint"
    REQUEST = "request"
    BATCH = "batch"
    NAME = "name"
    PRIORITY = "priority"
    GROUP = "group"
    KEY_LABEL = "key_label"
    CALLBACK_JSON = "callback_json"
    WEBHOOK_URL = "webhook_url"
    CREATED_AT = "created_at"
    SEQ = "seq"
    EST = "est"  # a batch line's estimated credits (set when its lane entry is admitted)
    LANE = "lane"  # "1" for a job that came from a batch lane
    # Written by the store's scripts only.
    STATE = "state"
    REASON = "reason"
    UNCERTAIN = "uncertain"
    # Submit.
    SUBMITTING_AT = "submitting_at"
    SUBMIT_ATTEMPTS = "submit_attempts"
    REFUSED = "refused"  # POSTs BFL refused before creating anything (503, not sent)
    BFL_ID = "bfl_id"
    POLLING_URL = "polling_url"
    COST = "cost"
    OUTPUT_MP = "output_mp"
    # Poll.
    POLL_ATTEMPTS = "poll_attempts"
    LAST_PENDING_S = "last_pending_s"
    NOT_FOUND_COUNT = "not_found_count"
    PROGRESS = "progress"
    SAMPLE_URL = "sample_url"
    SEED = "seed"
    # Save.
    DOWNLOAD_ATTEMPTS = "download_attempts"
    REFETCHED = "refetched"  # fresh sample URLs asked of BFL after a refused download
    SAMPLE_URL_AT = "sample_url_at"  # when the sample URL in use was fetched (else: Ready)
    MANIFEST_APPENDED = "manifest_appended"
    PATH = "path"
    SHA256 = "sha256"
    # Callbacks.
    WEBHOOK_DELIVERED = "webhook_delivered"
    WEBHOOK_FAILED = "webhook_failed"


PROTECTED_FIELDS = frozenset(
    {
        JobField.STATE,
        JobField.JOB_ID,
        JobField.BATCH,
        JobField.KEY_LABEL,
        JobField.GROUP,
        JobField.SEQ,
        JobField.CREATED_AT,
        JobField.UNCERTAIN,
        JobField.EST,
        JobField.LANE,
    }
)
"""Fields only the store's scripts write: they carry counters, keys or ordering."""

WRITABLE_FIELDS = frozenset(JobField) - PROTECTED_FIELDS
"""Fields the task logic may set, count or clear through the store."""

TIME_FIELDS = {f"t_{state.value}": state for state in State}
"""``t_<state>``: when the job last entered that state (seconds since the epoch)."""


@dataclass(frozen=True)
class NewJob:
    """A validated job as a producer hands it to the store."""

    job_id: str
    endpoint: str
    request_json: str
    batch: str
    name: str
    priority: int
    group: str
    key_label: str
    callback_json: str | None = None
    webhook_url: str | None = None


@dataclass(frozen=True)
class Job:
    """A job record as read from Redis; ``times`` maps a state to when the job entered it."""

    job_id: str
    endpoint: str
    request: dict[str, Any]
    batch: str
    name: str
    priority: int
    group: str
    key_label: str
    state: State
    reason: str | None
    bfl_id: str | None
    polling_url: str | None
    cost: float | None
    output_mp: float | None
    seed: int | None
    sample_url: str | None
    progress: float | None
    path: str | None
    sha256: str | None
    submitting_at: float | None
    submit_attempts: int
    poll_attempts: int
    last_pending_s: float | None
    not_found_count: int
    download_attempts: int
    refetched: int
    sample_url_at: float | None
    manifest_appended: bool
    uncertain: bool
    callback_json: str | None
    webhook_url: str | None
    webhook_delivered: bool
    webhook_failed: str | None
    created_at: float
    times: dict[str, float]
    est: float | None = None
    lane: bool = False


def _opt_float(value: str | None) -> float | None:
    return None if value is None or value == "" else float(value)


def _opt_int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return int(float(value))


def _count(raw: Mapping[str, str], field: JobField) -> int:
    return _opt_int(raw.get(field)) or 0


def _flag(raw: Mapping[str, str], field: JobField) -> bool:
    return raw.get(field) == "1"


def parse_job(job_id: str, raw: Mapping[str, str]) -> Job:
    """The one place a job hash becomes a ``Job``: missing numbers are None (or 0 for counts)."""
    request = json.loads(raw.get(JobField.REQUEST) or "{}")
    if not isinstance(request, dict):
        raise ValueError(f"job {job_id}: request is not a JSON object")
    return Job(
        job_id=job_id,
        endpoint=raw.get(JobField.ENDPOINT, ""),
        request=request,
        batch=raw.get(JobField.BATCH, ""),
        name=raw.get(JobField.NAME, ""),
        priority=_count(raw, JobField.PRIORITY),
        group=raw.get(JobField.GROUP, keys.DEFAULT_GROUP),
        key_label=raw.get(JobField.KEY_LABEL, ""),
        state=State(raw[JobField.STATE]),
        reason=raw.get(JobField.REASON),
        bfl_id=raw.get(JobField.BFL_ID),
        polling_url=raw.get(JobField.POLLING_URL),
        cost=_opt_float(raw.get(JobField.COST)),
        output_mp=_opt_float(raw.get(JobField.OUTPUT_MP)),
        seed=_opt_int(raw.get(JobField.SEED)),
        sample_url=raw.get(JobField.SAMPLE_URL),
        progress=_opt_float(raw.get(JobField.PROGRESS)),
        path=raw.get(JobField.PATH),
        sha256=raw.get(JobField.SHA256),
        submitting_at=_opt_float(raw.get(JobField.SUBMITTING_AT)),
        submit_attempts=_count(raw, JobField.SUBMIT_ATTEMPTS),
        poll_attempts=_count(raw, JobField.POLL_ATTEMPTS),
        last_pending_s=_opt_float(raw.get(JobField.LAST_PENDING_S)),
        not_found_count=_count(raw, JobField.NOT_FOUND_COUNT),
        download_attempts=_count(raw, JobField.DOWNLOAD_ATTEMPTS),
        refetched=_count(raw, JobField.REFETCHED),
        sample_url_at=_opt_float(raw.get(JobField.SAMPLE_URL_AT)),
        manifest_appended=_flag(raw, JobField.MANIFEST_APPENDED),
        uncertain=_flag(raw, JobField.UNCERTAIN),
        callback_json=raw.get(JobField.CALLBACK_JSON),
        webhook_url=raw.get(JobField.WEBHOOK_URL),
        webhook_delivered=_flag(raw, JobField.WEBHOOK_DELIVERED),
        webhook_failed=raw.get(JobField.WEBHOOK_FAILED),
        created_at=_opt_float(raw.get(JobField.CREATED_AT)) or 0.0,
        times={state.value: float(raw[name]) for name, state in TIME_FIELDS.items() if name in raw},
        est=_opt_float(raw.get(JobField.EST)),
        lane=_flag(raw, JobField.LANE),
    )
