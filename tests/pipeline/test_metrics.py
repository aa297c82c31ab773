"""Prometheus metrics scraped from Redis, parsed by prometheus_client, and checked against Redis."""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fluxq.config.catalog import estimate_credits, request_to_json, validate_request
from fluxq.tasks import batches
from fluxq.tasks.batchfile import Entry
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.metrics import registry_for
from fluxq.workers.state.limiter import PauseKind
from tests.support.pipeline import Pipeline

CAP = 3


def entry(i: int) -> Entry:
    model = validate_request("flux-dev", {"prompt": f"metric line {i}", "seed": i})
    body = json.dumps(request_to_json(model), separators=(",", ":"))
    return Entry(i, f"m{i}", f"m-{i}", "flux-dev", estimate_credits("flux-dev", model), body)


def scrape(pipeline: Pipeline) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape, by (name, sorted labels)."""
    text = generate_latest(registry_for(pipeline.rt.settings, pipeline.rt.redis)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_reports_what_redis_holds(make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_pipeline(active_cap=CAP)
    pipeline.sim.configure(active_cap=CAP)
    rt = pipeline.rt
    key = rt.label
    batches.enqueue_entries(rt, "night", (entry(i) for i in range(12)))
    enqueue(rt, "flux-dev", {"prompt": "one by one"}, batch="svc")
    # Before anything ran: the cap is full of batch lines and the rest wait
    before = scrape(pipeline)
    assert before[("fluxq_leases_held", (("key", key),))] == CAP
    assert before[("fluxq_effective_cap", (("key", key),))] == CAP
    lanes = ("fluxq_backlog_jobs", (("group", "default"), ("key", key), ("source", "lanes")))
    jobs = ("fluxq_backlog_jobs", (("group", "default"), ("key", key), ("source", "jobs")))
    assert before[lanes] == 12 - CAP
    assert before[jobs] == 1
    assert before[("fluxq_batch_jobs", (("batch", "night"), ("state", "admitted")))] == CAP
    assert before[("fluxq_batch_jobs", (("batch", "night"), ("state", "queued")))] == 12 - CAP
    pipeline.drain(timeout_s=60)
    after = scrape(pipeline)
    counters = rt.limiter.counters()
    assert after[("fluxq_leases_held", (("key", key),))] == 0
    assert after[lanes] == 0
    assert after[("fluxq_batch_jobs", (("batch", "night"), ("state", "done")))] == 12
    assert after[("fluxq_polls_total", (("key", key),))] == counters["polls"]
    assert counters["polls"] == pipeline.stats()["polls"]  # every GET BFL saw, counted once
    assert after[("fluxq_ready_total", (("key", key),))] == 13
    assert after[("fluxq_credits_spent_total", (("key", key),))] == 13 * 2.5
    assert after[("fluxq_batch_credits_spent", (("batch", "night"),))] == 12 * 2.5
    assert after[("fluxq_rate_limited_total", (("key", key), ("kind", "cap_signal")))] == 0
    assert after[("fluxq_polls_per_job", (("key", key),))] == counters["polls"] / 13
    for name in ("fluxq_submit_to_ready_seconds", "fluxq_ready_to_saved_seconds"):
        count = after[(f"{name}_count", (("endpoint", "flux-dev"),))]
        assert count == 13
        assert after[(f"{name}_bucket", (("endpoint", "flux-dev"), ("le", "+Inf")))] == 13
        assert after[(f"{name}_sum", (("endpoint", "flux-dev"),))] > 0


def test_a_pause_and_a_cut_cap_show(make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_pipeline(active_cap=CAP)
    rt = pipeline.rt
    rt.limiter.pause(PauseKind.OUT_OF_CREDITS, "402")
    rt.limiter.rate_limited(now_s=rt.clock())
    rt.limiter.count("cap_signal_429")
    samples = scrape(pipeline)
    key = rt.label
    assert samples[("fluxq_admission_paused", (("key", key), ("kind", "out_of_credits")))] == 1
    assert samples[("fluxq_effective_cap", (("key", key),))] < CAP
    assert samples[("fluxq_rate_limited_total", (("key", key), ("kind", "cap_signal")))] == 1
