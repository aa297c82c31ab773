"""Admission: take free slots for waiting jobs (one Lua step) and send their submit tasks.

Runs after every enqueue, after every slot release, and on the periodic sweep.
"""

from __future__ import annotations

import logging

from fluxq.workers.runtime import Runtime

log = logging.getLogger("fluxq.admission")


def admit_and_dispatch(rt: Runtime) -> int:
    """Admit as many waiting jobs as the caps allow and dispatch them; returns how many."""
    admitted = rt.limiter.admit(now_s=rt.clock())
    for job_id in admitted:
        job = rt.store.get(job_id)
        if job is None:  # expired between the Lua step and here: its lease lapses on its own
            continue
        # A crash before this send leaves an admitted job with a lease: the sweep requeues it.
        rt.dispatch.submit(job)
    if admitted:
        log.debug("admitted count=%d label=%s", len(admitted), rt.label)
    return len(admitted)
