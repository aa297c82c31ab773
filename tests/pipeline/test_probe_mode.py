"""Probe mode (opt-in): a finished task frees its slot before any poll sees it, within BFL's cap.

At the cap, one job more is admitted and its POST tried until BFL accepts it; BFL accepts only
when one of ours has finished, so BFL never holds more than the cap, the probe's 429s are counted
apart and never cut the cap, and every job is still submitted exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

from fluxq.tasks.enqueue import enqueue
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline

CAP = 3


def probing(make_pipeline: Callable[..., Pipeline], **overrides: object) -> Pipeline:
    pipeline = make_pipeline(
        active_cap=CAP, probe_submits=True, probe_interval_s=0.01, probe_extra=4, **overrides
    )
    pipeline.sim.configure(active_cap=CAP, latency={"default": {"kind": "fixed", "seconds": 5.0}})
    return pipeline


def test_probes_keep_bfl_full_without_passing_its_cap_or_paying_twice(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = probing(make_pipeline)
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"probe {i}"}) for i in range(12)]
    pipeline.drain(timeout_s=30)
    assert all(pipeline.job(i).state is State.DONE for i in ids)
    stats = pipeline.stats()
    assert stats["submits"] == 12
    assert stats["duplicate_submits"] == 0
    assert stats["max_active"] <= CAP
    counters = pipeline.rt.limiter.counters()
    # Every 429 BFL sent was a probe's (or a job a probe overtook): none cut the cap
    assert counters.get("probe_429", 0) == stats["rate_limited_429"]
    assert counters.get("cap_signal_429", 0) == 0
    assert pipeline.rt.limiter.effective_cap(now_s=pipeline.rt.clock()) == CAP
    assert counters.get("probe_accepted", 0) >= 1
    assert pipeline.rt.limiter.probe() is None


def test_a_probe_takes_a_finished_tasks_slot_before_any_poll_sees_it(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a cold endpoint polled every 0.5 s, ten times the tasks' 50 ms
    pipeline = probing(make_pipeline, poll_max_delay_s=5.0)
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"late poll {i}"}) for i in range(8)]
    # When the pipeline runs only until the first poll is due
    while pipeline.dispatch.heap and pipeline.dispatch.heap[0].kind != "poll":
        pipeline.step()
    first_poll_due = min(d.at_s for d in pipeline.dispatch.heap if d.kind == "poll")
    while pipeline.dispatch.heap and pipeline.dispatch.heap[0].at_s < first_poll_due:
        pipeline.step()
    # Then more than the cap's worth were submitted (each proven by a finished task), and BFL
    # never held more than the cap at once
    submitted = [i for i in ids if pipeline.job(i).state is State.SUBMITTED]
    assert len(submitted) > CAP
    assert pipeline.stats()["max_active"] <= CAP
    assert pipeline.rt.limiter.held() <= CAP + 4
    pipeline.drain(timeout_s=60)
    assert all(pipeline.job(i).state is State.DONE for i in ids)


def test_without_probe_mode_a_job_never_waits_on_a_429(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(active_cap=CAP)
    pipeline.sim.configure(active_cap=CAP)
    ids = [enqueue(pipeline.rt, "flux-dev", {"prompt": f"plain {i}"}) for i in range(8)]
    pipeline.drain(timeout_s=30)
    assert all(pipeline.job(i).state is State.DONE for i in ids)
    assert pipeline.stats()["rate_limited_429"] == 0
    counters = pipeline.rt.limiter.counters()
    assert counters.get("probe_429", 0) == counters.get("cap_signal_429", 0) == 0
    assert "probe_accepted" not in counters
