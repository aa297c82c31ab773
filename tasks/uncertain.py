"""A POST whose outcome is unknown: BFL may have created, and billed, a task fluxq cannot see.

Submit (no answer, a 5xx, an unreadable 2xx, its own marker found on redelivery) and the sweep (a
worker lost mid-POST) settle such a job with ``settle_uncertain``: requeued when the user allows
resending (FLUXQ_RESUBMIT_UNCERTAIN), else failed as uncertain with its slot held as a doubtful
hold while such a task could still run (``fail_uncertain``, ``doubt_hold_until_s``). A late answer
(the POST's own, or BFL's webhook) recovers the job: ``lifecycle.recover_uncertain``.
"""

from __future__ import annotations

import logging

from fluxq.config.endpoint_spec import IMAGE
from fluxq.tasks import lifecycle
from fluxq.tasks.admission import admit_and_dispatch
from fluxq.workers.bfl.outcomes import doubt_hold_s
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.jobs import Job, State
from fluxq.workers.state.latency_book import size_class

log = logging.getLogger("fluxq.lifecycle")  # the name these lines had when lifecycle held them

UNCERTAIN_REASON = (
    "uncertain: BFL may have created and billed the task ({detail}); not resubmitted "
    "(FLUXQ_RESUBMIT_UNCERTAIN=true allows it)"
)
"""The reason of a job failed as uncertain; ``{detail}`` says what happened to its POST."""


def settle_uncertain(rt: Runtime, job: Job, detail: str) -> str:
    """The POST may have created a task: count it, and resubmit only if the user allows it.

    Returns ``"requeued"`` or ``"uncertain"`` (failed). A failed job keeps its slot leased until
    the lease lapses, because a task we cannot see may still run at BFL.
    """
    if rt.settings.resubmit_uncertain:
        rt.store.mark_uncertain(job.job_id)
        lifecycle.requeue(rt, job, f"resubmitting after an unknown outcome: {detail}")
        admit_and_dispatch(rt)
        return "requeued"
    fail_uncertain(rt, job, detail)
    return "uncertain"


def fail_uncertain(rt: Runtime, job: Job, detail: str) -> bool:
    """The POST may have created a task we cannot see: flag and count it, and fail it.

    Its slot stays held while such a task could still run (``doubt_hold_until_s``), and is
    counted among the doubtful holds. A late answer recovers the job
    (``lifecycle.recover_uncertain``).
    """
    rt.store.mark_uncertain(job.job_id)
    until_s = doubt_hold_until_s(rt, job)
    rt.limiter.hold_doubtful(job.job_id, job.group, until_s=until_s)
    log.error(
        "submit outcome unknown, slot held %.0f s job=%s batch=%s detail=%s",
        until_s - rt.clock(),
        job.job_id,
        job.batch,
        detail,
    )
    reason = UNCERTAIN_REASON.format(detail=detail)
    moved = lifecycle.end(rt, job, State.FAILED, reason=reason, keep_slot=True)
    if moved and job.est is not None:
        rt.store.account(job.batch, spent=job.est)  # it may have been billed: count it so
    return moved


def doubt_hold_until_s(rt: Runtime, job: Job) -> float:
    """Until when the slot of a job whose POST's outcome is unknown stays held: from now (the POST
    has ended, or its worker is gone), as long as a task of its endpoint could still run."""
    size = size_class(job.request.get("width"), job.request.get("height"))
    model = rt.latency.model(job.endpoint, size)
    spec = rt.settings.catalog.get(job.endpoint)
    hold_s = doubt_hold_s(
        model,
        factor=rt.settings.doubt_hold_factor,
        floor_s=rt.settings.doubt_hold_floor_s,
        # A video may run past FLUXQ_POLL_DEADLINE_S: its own deadline bounds the hold
        ceiling_s=rt.settings.poll_deadline_s_for(spec.media if spec else IMAGE),
    )
    return rt.clock() + hold_s
