"""Every Redis key fluxq uses, built here and only here; the layout is documented once, below.

``{k}`` is a key label (sha256 of the BFL API key, 12 hex chars: never the key itself) and
``{g}`` a cap group (an endpoint with a nested cap such as ``flux-kontext-max``, else ``default``).

    fluxq:job:{job_id}            hash    the job record: request JSON, endpoint, batch, name,
                                          priority, state, reason, bfl_id, polling_url, cost,
                                          t_<state> timestamps, attempt counts, file path, sha256
    fluxq:backlog:{k}:{g}         zset    waiting job ids, score = priority band + arrival order
    fluxq:seq                     string  arrival counter for backlog scores
    fluxq:slots:{k}               zset    lease holders (job ids) of the key's cap, score = expiry
    fluxq:slots:{k}:{g}           zset    lease holders of one cap group, score = expiry (kept for
                                          every group; only nested caps are enforced)
    fluxq:probe:{k}               string  probe mode: the job admitted beyond the cap whose POST
                                          is out (or retrying after a 429); expires with a lease
    fluxq:stats:{k}               hash    counters: cap_signal_429 (a 429 with a free slot),
                                          probe_429, probe_accepted, polls, ready, credits_spent,
                                          bfl_webhooks(_forged, _ignored, _recovered, _retry)
    fluxq:lane:{k}:{g}:{batch}    list    a batch's waiting lines as compact entries
                                          "line_id\tname\tendpoint\tcredits\trequest" (no job
                                          hash until admitted, then "{batch}.{line_id}")
    fluxq:lanes:{k}:{g}           zset    batches with a lane in the group, score = priority band
                                          + arrival (a batch paused for its budget leaves it)
    fluxq:laneslots:{k}           set     lease holders that came from a lane (the batch share)
    fluxq:doubt:{k}               zset    slots held for doubtful POSTs (a job failed as
                                          uncertain), score = when the hold ends; each member
                                          is also in fluxq:slots:{k} (the AIMD cut leaves them out)
    fluxq:groups:{k}              set     cap groups that have had a backlog for this key
    fluxq:cap:{k}                 hash    AIMD and pause state: reduced_to, reduced_at,
                                          paused_until, pause_kind, pause_detail; the last
                                          refused POST: refused_at, refused_detail
    fluxq:workers                 zset    worker processes ("host:pid"), score = last heartbeat
                                          (each sweep tick): `/readyz` counts the recent ones
    fluxq:batch:{batch}           hash    per-batch counters by state, plus "total", "uncertain";
                                          a batch's priority, seq, created_at, started_at, and
                                          credits: budget, committed (admitted, unsent), spent;
                                          paused ("budget" or "cancelled")
    fluxq:batches                 zset    batch names, score = creation time
    fluxq:reasons:{batch}         hash    failure reason (its first clause) -> failed jobs
    fluxq:timings                 set     endpoints with latency histograms
    fluxq:timings:{name}:{ep}     hash    a histogram (submit_to_ready, ready_to_saved): bucket
                                          upper bound -> count, plus "count" and "sum" (seconds)
    fluxq:names:{batch}           hash    lower-cased file stem -> the job id that holds it: one
                                          job per file name in a batch (``enqueue.lua`` refuses
                                          a second); kept like the batch counters
    fluxq:polls:{k}               zset    submitted jobs waiting for a poll, score = when it is
                                          due (a claimed one: when its claim ends); see
                                          poll_queue.py
    fluxq:saves:{k}               zset    ready jobs awaiting their save, score = when the sweep
                                          re-sends it (a save lost with a worker is redone)
    fluxq:savequeue:{k}           list    job ids whose save is due now, for the worker processes
                                          that serve fluxq.save (save_queue.py)
    fluxq:latency:{endpoint}      list    the last 1024 observed generation times of the endpoint,
                                          each "pending_s ready_s" (the last Pending and first
                                          Ready poll, seconds after submit; see latency_book.py)
    fluxq:latency:{endpoint}:{sz} list    the same for one image size class (e.g. "1.0mp")
    fluxq:lock:{name}             string  short-lived locks (the sweep)
    fluxq:events                  pubsub  one JSON message per job state change

Lua scripts that reach a key named only inside Redis (``admit.lua``: each popped job's hash and
its batch, each group's backlog and slots) get the builder's value for an empty last part, e.g.
``job("")``, as a prefix and append the name; so every builder keeps its variable part last.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only: `fluxq batch status`'s fast path imports no pydantic
    from pydantic import SecretStr

PREFIX = "fluxq"
DEFAULT_GROUP = "default"
EVENTS_CHANNEL = f"{PREFIX}:events"
SEQ = f"{PREFIX}:seq"
BATCHES = f"{PREFIX}:batches"
WORKERS = f"{PREFIX}:workers"


def key_label(api_key: SecretStr | None) -> str:
    """A stable, non-secret name for an API key: 12 hex chars of its sha256."""
    if api_key is None:
        return "nokey"
    return hashlib.sha256(api_key.get_secret_value().encode()).hexdigest()[:12]


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def backlog(label: str, group: str) -> str:
    return f"{PREFIX}:backlog:{label}:{group}"


def slots(label: str) -> str:
    return f"{PREFIX}:slots:{label}"


def group_slots(label: str, group: str) -> str:
    return f"{PREFIX}:slots:{label}:{group}"


def groups(label: str) -> str:
    return f"{PREFIX}:groups:{label}"


def cap_state(label: str) -> str:
    return f"{PREFIX}:cap:{label}"


def batch(name: str) -> str:
    return f"{PREFIX}:batch:{name}"


def names(batch: str) -> str:
    return f"{PREFIX}:names:{batch}"


def probe(label: str) -> str:
    return f"{PREFIX}:probe:{label}"


def polls(label: str) -> str:
    return f"{PREFIX}:polls:{label}"


def save_queue(label: str) -> str:
    return f"{PREFIX}:savequeue:{label}"


def stats(label: str) -> str:
    return f"{PREFIX}:stats:{label}"


def lane(label: str, group: str, batch: str) -> str:
    return f"{PREFIX}:lane:{label}:{group}:{batch}"


def lanes(label: str, group: str) -> str:
    return f"{PREFIX}:lanes:{label}:{group}"


def doubt(label: str) -> str:
    return f"{PREFIX}:doubt:{label}"


def lane_slots(label: str) -> str:
    return f"{PREFIX}:laneslots:{label}"


def reasons(batch: str) -> str:
    return f"{PREFIX}:reasons:{batch}"


TIMED_ENDPOINTS = f"{PREFIX}:timings"


def timings(name: str, endpoint: str) -> str:
    return f"{PREFIX}:timings:{name}:{endpoint}"


def saves(label: str) -> str:
    return f"{PREFIX}:saves:{label}"


def latency(endpoint: str, size: str | None = None) -> str:
    if size is None:
        return f"{PREFIX}:latency:{endpoint}"
    return f"{PREFIX}:latency:{endpoint}:{size}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"
