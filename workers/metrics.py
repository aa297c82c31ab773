"""Prometheus metrics, gathered from Redis at scrape time by whichever process serves them.

Workers serve nothing: everything here is read from the keys they already keep (counters,
leases, lanes, batch hashes, ``workers/state/histograms``), with a handful of round trips
whose number grows with the number of batches and cap groups, never with the number of jobs, so a
scrape costs the same with ten jobs queued or a million. ``prometheus-client`` renders the text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from fluxq.config.settings import Settings
from fluxq.workers.state import histograms, keys
from fluxq.workers.state.batches import read_batch_status
from fluxq.workers.state.jobs import State
from fluxq.workers.state.limiter import Caps, SlotLimiter
from fluxq.workers.state.store import JobStore

WEBHOOK_COUNTERS = {
    "authentic": "bfl_webhooks",
    "forged": "bfl_webhooks_forged",
    "ignored": "bfl_webhooks_ignored",
    "recovered": "bfl_webhooks_recovered",
    "retry": "bfl_webhooks_retry",
}
"""The ``outcome`` label of ``fluxq_bfl_webhooks`` and the ``fluxq:stats:{k}`` counter of each."""

TOP_BATCHES = 20
"""Batches shown per scrape (the newest), so the ``batch`` label's cardinality stays bounded."""

MAX_HOLDERS = 1000
"""Lease holders read per scrape at most: the cap, probes and lapsed leases stay far below it."""

SLOT_HOLDERS = ("at_bfl", "sending", "doubtful_post", "ended")
"""The ``holder`` label of ``fluxq_slots``: its values add up to ``fluxq_leases_held``."""


def registry_for(settings: Settings, client: redis.Redis[str]) -> CollectorRegistry:
    """A registry holding fluxq's collector for the key in ``settings`` (nothing else)."""
    limiter = SlotLimiter(
        client,
        label=keys.key_label(settings.bfl_api_key),
        caps=Caps(key_cap=settings.active_cap, group_caps=dict(settings.endpoint_caps)),
        lease_ttl_s=settings.lease_ttl_s,
        aimd_increase_interval_s=settings.aimd_increase_interval_s,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FluxqCollector(client, limiter))
    return registry


class FluxqCollector(Collector):
    """One key's admission state, the newest batches and the latency histograms."""

    def __init__(
        self, client: redis.Redis[str], limiter: SlotLimiter, *, top_batches: int = TOP_BATCHES
    ) -> None:
        self._redis = client
        self._limiter = limiter
        self._store = JobStore(client)
        self._top = top_batches

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        label = self._limiter.label
        yield from self._admission(label, now)
        yield from self._counters(label)
        yield from self._batches(now)
        yield from self._histograms()

    def _admission(self, label: str, now: float) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "fluxq_leases_held",
            "Slot leases held: tasks at BFL, POSTs being sent, and slots held for doubtful POSTs "
            "(fluxq_slots tells them apart)",
            labels=["key"],
        )
        held.add_metric([label], self._limiter.held())
        cap = GaugeMetricFamily(
            "fluxq_effective_cap",
            "The AIMD cap (below the key's after a 429): it limits the tasks known to run; "
            "admission allows it plus the slots held for doubtful POSTs, up to fluxq_active_cap",
            labels=["key"],
        )
        cap.add_metric([label], self._limiter.effective_cap(now_s=now))
        configured = GaugeMetricFamily(
            "fluxq_active_cap", "The key's configured active-task cap", labels=["key"]
        )
        configured.add_metric([label], self._limiter.caps.key_cap)
        by_group = GaugeMetricFamily(
            "fluxq_leases_held_by_group", "Slot leases held per cap group", labels=["key", "group"]
        )
        for group, count in self._limiter.held_by_group().items():
            by_group.add_metric([label, group], count)
        backlog = GaugeMetricFamily(
            "fluxq_backlog_jobs",
            "Jobs waiting for a slot per cap group: sent one by one, and batch lines in lanes",
            labels=["key", "group", "source"],
        )
        for group, count in self._limiter.backlog_sizes().items():
            backlog.add_metric([label, group, "jobs"], count)
            backlog.add_metric([label, group, "lanes"], self._lane_lines(label, group))
        paused = GaugeMetricFamily(
            "fluxq_admission_paused",
            "1 while admission is paused, by why (out_of_credits 402, not_authorised 401/403, "
            "retry_after, and any other kind the limiter records)",
            labels=["key", "kind"],
        )
        pause = self._limiter.paused(now_s=now)
        if pause is not None:
            paused.add_metric([label, pause.kind.value], 1)
        yield from (held, cap, configured, by_group, backlog, paused)
        yield from self._slots(label)

    def _slots(self, label: str) -> Iterator[Metric]:
        """The leases held, told apart by what holds them, and when the doubtful holds end."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(keys.slots(label), 0, MAX_HOLDERS - 1)
        pipe.zrange(keys.doubt(label), 0, MAX_HOLDERS - 1, withscores=True)
        holders: list[str]
        doubt: list[tuple[str, float]]
        holders, doubt = pipe.execute()
        doubtful = {job_id for job_id, _ in doubt}
        running = [job_id for job_id in holders if job_id not in doubtful]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in running:
            pipe.hget(keys.job(job_id), "state")
        counts = dict.fromkeys(SLOT_HOLDERS, 0)
        counts["doubtful_post"] = len(doubt)
        for state in pipe.execute() if running else []:
            if state == State.SUBMITTED.value:
                counts["at_bfl"] += 1
            elif state == State.ADMITTED.value:
                counts["sending"] += 1
            else:
                counts["ended"] += 1
        slots = GaugeMetricFamily(
            "fluxq_slots",
            "Slot leases by holder: at_bfl (tasks running at BFL), sending (POSTs being sent or "
            "tried again after BFL refused them), doubtful_post (held for a POST whose outcome "
            "is unknown: a job failed as uncertain), ended (jobs ended, freed by the next sweep)",
            labels=["key", "holder"],
        )
        for holder, count in counts.items():
            slots.add_metric([label, holder], count)
        ends = GaugeMetricFamily(
            "fluxq_slots_doubtful_end_timestamp_seconds",
            "When slots held for doubtful POSTs are freed (Unix time): the next one and the last "
            "one to end; absent while none is held",
            labels=["key", "which"],
        )
        if doubt:
            ends.add_metric([label, "next"], doubt[0][1])
            ends.add_metric([label, "last"], doubt[-1][1])
        yield from (slots, ends)

    def _lane_lines(self, label: str, group: str) -> int:
        batches: list[str] = self._redis.zrange(keys.lanes(label, group), 0, -1)
        if not batches:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for batch in batches:
            pipe.llen(keys.lane(label, group, batch))
        return sum(int(n) for n in pipe.execute())

    def _counters(self, label: str) -> Iterator[Metric]:
        counters = self._limiter.counters()
        limited = CounterMetricFamily(
            "fluxq_rate_limited",
            "429s from BFL: cap signals (a 429 with a free slot; they cut the cap) apart from "
            "probes (expected in probe mode)",
            labels=["key", "kind"],
        )
        limited.add_metric([label, "cap_signal"], counters.get("cap_signal_429", 0))
        limited.add_metric([label, "probe"], counters.get("probe_429", 0))
        polls = CounterMetricFamily("fluxq_polls", "Polls sent to BFL", labels=["key"])
        polls.add_metric([label], counters.get("polls", 0))
        ready = CounterMetricFamily("fluxq_ready", "Tasks BFL reported Ready", labels=["key"])
        ready.add_metric([label], counters.get("ready", 0))
        per_job = GaugeMetricFamily(
            "fluxq_polls_per_job",
            "Polls per task that became Ready, since the start",
            labels=["key"],
        )
        per_job.add_metric([label], counters.get("polls", 0) / max(1.0, counters.get("ready", 0)))
        credits = CounterMetricFamily(
            "fluxq_credits_spent",
            "Credits spent: BFL's cost per submitted task, or the catalog's estimate",
            labels=["key"],
        )
        credits.add_metric([label], counters.get("credits_spent", 0.0))
        refused = CounterMetricFamily(
            "fluxq_submits_refused",
            "POSTs BFL refused before creating anything (503, or never sent): tried again, "
            "never failed for it",
            labels=["key"],
        )
        refused.add_metric([label], counters.get("refused_unavailable", 0))
        hooks = CounterMetricFamily(
            "fluxq_bfl_webhooks",
            "BFL's webhooks (webhook mode) by outcome: authentic (checked and read), forged "
            "(refused: wrong token or secret), ignored (nothing to do), recovered (an uncertain "
            "job's task proven by its webhook), retry (came before the POST's answer: 503)",
            labels=["key", "outcome"],
        )
        for outcome, name in WEBHOOK_COUNTERS.items():
            hooks.add_metric([label, outcome], counters.get(name, 0))
        yield from (limited, polls, ready, per_job, credits, refused, hooks)

    def _batches(self, now: float) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "fluxq_batch_jobs", f"Jobs by state in the {self._top} newest batches",
            labels=["batch", "state"],
        )  # fmt: skip
        spent = GaugeMetricFamily(
            "fluxq_batch_credits_spent", "Credits a batch's lines have spent", labels=["batch"]
        )
        newest: list[str] = self._redis.zrange(keys.BATCHES, -self._top, -1) if self._top else []
        for batch in newest:
            status = read_batch_status(self._store, batch, now_s=now)
            if status is None:
                continue
            for state in State:
                jobs.add_metric([batch, state.value], status.counts.get(state.value, 0))
            spent.add_metric([batch], status.spent)
        count = GaugeMetricFamily("fluxq_batches", "Batches known to fluxq")
        count.add_metric([], self._redis.zcard(keys.BATCHES))
        yield from (jobs, spent, count)

    def _histograms(self) -> Iterator[Metric]:
        helps = {
            histograms.SUBMIT_TO_READY: (
                "Seconds from BFL's answer to the POST to the poll that saw Ready"
            ),
            histograms.READY_TO_SAVED: "Seconds from the poll that saw Ready to the saved file",
        }
        for name, text in helps.items():
            family = HistogramMetricFamily(f"fluxq_{name}_seconds", text, labels=["endpoint"])
            for histogram in histograms.read(self._redis, name):
                family.add_metric(
                    [histogram.endpoint], list(histogram.buckets), sum_value=histogram.total
                )
            yield family
