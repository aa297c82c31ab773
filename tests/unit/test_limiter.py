"""The slot limiter: admission up to nested caps, leases, AIMD and pause (real Redis).

The last test is invariant 1 at this level: many clients admitting at once never exceed a cap.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fluxq.workers.state import keys
from fluxq.workers.state.jobs import DEFAULT_PRIORITY, NewJob, State
from fluxq.workers.state.limiter import Caps, PauseKind, SlotLimiter
from fluxq.workers.state.store import JobStore

NOW_S = 1_700_000_000.125
LABEL = "abc123abc123"
KONTEXT = "flux-kontext-max"
DEFAULT = keys.DEFAULT_GROUP
CAPS = Caps(key_cap=24, group_caps={KONTEXT: 6})
INTERVAL_S = 5.0


def new_job(job_id: str, *, group: str = DEFAULT, priority: int = DEFAULT_PRIORITY) -> NewJob:
    return NewJob(
        job_id=job_id,
        endpoint=KONTEXT if group == KONTEXT else "flux-dev",
        request_json=json.dumps({"prompt": job_id}),
        batch="b1",
        name=job_id,
        priority=priority,
        group=group,
        key_label=LABEL,
    )


@pytest.fixture
def store(redis_client: redis.Redis[str]) -> JobStore:
    return JobStore(redis_client)


@pytest.fixture
def limiter(redis_client: redis.Redis[str]) -> SlotLimiter:
    return SlotLimiter(
        redis_client, label=LABEL, caps=CAPS, lease_ttl_s=60.0, aimd_increase_interval_s=INTERVAL_S
    )


def fill(store: JobStore, n: int, *, group: str = DEFAULT, prefix: str = "j") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    store.enqueue_many((new_job(job_id, group=group) for job_id in ids), now_s=NOW_S)
    return ids


def release_all(limiter: SlotLimiter, store: JobStore, job_ids: list[str]) -> None:
    for job_id in job_ids:
        job = store.get(job_id)
        assert job is not None
        assert limiter.release(job_id, job.group)


def test_admission_takes_exactly_the_key_cap_and_no_more(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given 30 waiting jobs
    ids = fill(store, 30)

    # When admission runs twice
    first = limiter.admit(now_s=NOW_S)
    second = limiter.admit(now_s=NOW_S)

    # Then exactly 24 were admitted, in arrival order, and each holds a lease
    assert first == ids[:24]
    assert second == []
    assert limiter.held() == 24
    assert limiter.held_by_group() == {DEFAULT: 24}
    assert limiter.backlog_sizes() == {DEFAULT: 6}
    assert store.batch_counts("b1")["admitted"] == 24
    job = store.get(ids[0])
    assert job is not None
    assert job.state is State.ADMITTED
    assert job.times["admitted"] == NOW_S


def test_kontext_max_is_capped_at_6_inside_24_while_other_groups_fill_the_rest(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given 20 kontext-max jobs that arrived before 30 others
    fill(store, 20, group=KONTEXT, prefix="k")
    fill(store, 30, group=DEFAULT, prefix="d")

    # When admission runs
    admitted = limiter.admit(now_s=NOW_S)

    # Then 6 kontext-max jobs run and the other 18 slots go to the rest
    assert admitted[:6] == [f"k{i}" for i in range(6)]
    assert admitted[6:] == [f"d{i}" for i in range(18)]
    assert limiter.held_by_group() == {KONTEXT: 6, DEFAULT: 18}
    assert limiter.held() == 24


def test_a_release_of_a_kontext_slot_admits_the_next_kontext_job(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given kontext-max full (6) with more waiting, and room under the key cap
    fill(store, 10, group=KONTEXT, prefix="k")
    assert len(limiter.admit(now_s=NOW_S)) == 6

    # When one kontext-max job finishes
    assert limiter.release("k0", KONTEXT)

    # Then exactly one more is admitted
    assert limiter.admit(now_s=NOW_S) == ["k6"]
    assert limiter.admit(now_s=NOW_S) == []


def test_admission_follows_priority_across_groups_then_arrival(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given jobs of several priorities spread over two groups
    store.enqueue(new_job("d-low", priority=1), now_s=NOW_S)
    store.enqueue(new_job("k-mid", group=KONTEXT, priority=5), now_s=NOW_S)
    store.enqueue(new_job("d-mid", priority=5), now_s=NOW_S)
    store.enqueue(new_job("k-high", group=KONTEXT, priority=9), now_s=NOW_S)
    store.enqueue(new_job("d-high", priority=9), now_s=NOW_S)

    # When admission runs
    admitted = limiter.admit(now_s=NOW_S)

    # Then higher priority first, and arrival order within a priority, whatever the group
    assert admitted == ["k-high", "d-high", "k-mid", "d-mid", "d-low"]


def test_a_cancelled_job_in_the_backlog_is_skipped_without_taking_a_slot(
    store: JobStore, limiter: SlotLimiter, redis_client: redis.Redis[str]
) -> None:
    # Given three waiting jobs: one cancelled through the store, one whose backlog entry went
    # stale (its record says cancelled, as if moved by an older writer), one queued
    for job_id in ("cancelled", "stale", "ok"):
        store.enqueue(new_job(job_id), now_s=NOW_S)
    assert store.transition("cancelled", State.CANCELLED, from_states=[State.QUEUED], now_s=NOW_S)
    redis_client.hset(keys.job("stale"), "state", State.CANCELLED.value)

    # When admission runs
    admitted = limiter.admit(now_s=NOW_S)

    # Then only the queued job holds a slot and the stale entry is gone
    assert admitted == ["ok"]
    assert limiter.held() == 1
    assert limiter.backlog_sizes() == {DEFAULT: 0}
    stale = store.get("stale")
    assert stale is not None
    assert stale.state is State.CANCELLED


def test_a_release_frees_a_slot_for_the_next_admission(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given the key cap full and one job waiting
    ids = fill(store, 25)
    limiter.admit(now_s=NOW_S)

    # When one job releases its slot (and a second release finds nothing)
    assert limiter.release(ids[3], DEFAULT)
    assert limiter.release(ids[3], DEFAULT) is False

    # Then the waiting job is admitted
    assert limiter.admit(now_s=NOW_S) == [ids[24]]


def test_expired_leases_still_count_until_they_are_released(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given the key cap full of leases, 6 of them kontext-max, and more jobs waiting
    fill(store, 6, group=KONTEXT, prefix="k")
    fill(store, 50, prefix="d")
    held = limiter.admit(now_s=NOW_S)
    later_s = NOW_S + 61.0

    # When every lease has expired
    expired = limiter.expired(now_s=later_s)

    # Then they are reported with their groups, yet still block admission
    assert sorted(expired) == sorted(
        (job_id, KONTEXT if job_id.startswith("k") else DEFAULT) for job_id in held
    )
    assert limiter.expired(now_s=NOW_S + 59.0) == []
    assert limiter.admit(now_s=later_s) == []
    # And once the sweep releases them, their slots are reused
    for job_id, group in expired:
        limiter.release(job_id, group)
    assert len(limiter.admit(now_s=later_s)) == 24


def test_holding_a_leased_job_extends_its_lease_in_both_slot_sets(
    store: JobStore, limiter: SlotLimiter, redis_client: redis.Redis[str]
) -> None:
    # Given two admitted kontext-max jobs
    fill(store, 2, group=KONTEXT, prefix="k")
    limiter.admit(now_s=NOW_S)

    # When one is held (a poll) 50 s later
    limiter.hold("k0", KONTEXT, now_s=NOW_S + 50)

    # Then only the other expires at the first expiry, in both slot sets, and nothing was added
    assert limiter.expired(now_s=NOW_S + 61) == [("k1", KONTEXT)]
    assert redis_client.zscore(keys.group_slots(LABEL, KONTEXT), "k0") == NOW_S + 110
    assert redis_client.zscore(keys.slots(LABEL), "k0") == NOW_S + 110
    assert limiter.held() == 2


def test_hold_leases_a_slot_without_a_cap_check(store: JobStore, limiter: SlotLimiter) -> None:
    # Given the key cap full
    fill(store, 24)
    limiter.admit(now_s=NOW_S)

    # When the sweep re-leases a submitted job whose lease was lost
    limiter.hold("lost", DEFAULT, now_s=NOW_S)

    # Then it counts, even above the cap: its BFL task is running
    assert limiter.held() == 25
    assert limiter.held_by_group() == {DEFAULT: 25}


def test_requeue_front_puts_the_job_ahead_of_its_priority_and_frees_its_slot(
    store: JobStore, limiter: SlotLimiter, redis_client: redis.Redis[str]
) -> None:
    # Given j0 admitted, j1 and j2 waiting at the same priority, and a subscriber
    fill(store, 3)
    assert limiter.admit(now_s=NOW_S, max_jobs=1) == ["j0"]
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=2.0) is not None
    try:
        # When BFL answers 429 and j0 is requeued
        moved = limiter.requeue_front("j0", DEFAULT, now_s=NOW_S + 1, reason="429: cap reached")

        # Then its slot is free, it is queued again, and the event carries the reason
        assert moved
        assert limiter.held() == 0
        event = json.loads(pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)["data"])
        assert event["state"] == "queued"
        assert event["from"] == "admitted"
        assert event["reason"] == "429: cap reached"
    finally:
        pubsub.close()
    # And a later job of higher priority still goes first, then j0 ahead of j1 and j2
    store.enqueue(new_job("urgent", priority=DEFAULT_PRIORITY + 1), now_s=NOW_S)
    assert limiter.admit(now_s=NOW_S + 2) == ["urgent", "j0", "j1", "j2"]
    assert limiter.requeue_front("j1", DEFAULT, now_s=NOW_S, reason="x")
    assert limiter.requeue_front("j1", DEFAULT, now_s=NOW_S, reason="x") is False
    assert store.batch_counts("b1")["queued"] == 1


def test_a_429_halves_the_cap_from_what_is_held_and_it_climbs_back_one_per_interval(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given 24 held slots and more waiting
    ids = fill(store, 60)
    held = limiter.admit(now_s=NOW_S)

    # When BFL answers 429
    cap = limiter.rate_limited(now_s=NOW_S)

    # Then the cap is half of what was held, and admission respects it
    assert cap == 12
    assert limiter.effective_cap(now_s=NOW_S) == 12
    release_all(limiter, store, held[:14])  # 10 held now
    assert limiter.admit(now_s=NOW_S) == ids[24:26]
    # And a burst of further 429s within the same interval is one signal: no further cut
    assert limiter.rate_limited(now_s=NOW_S) == 12
    assert limiter.rate_limited(now_s=NOW_S + INTERVAL_S / 2) == 12
    # And a 429 one interval later halves again, from the 12 then held
    later_s = NOW_S + INTERVAL_S
    assert limiter.rate_limited(now_s=later_s) == 6
    # And the cap climbs back by one per interval, up to the key cap and no further
    assert limiter.effective_cap(now_s=later_s + INTERVAL_S - 0.001) == 6
    assert limiter.effective_cap(now_s=later_s + INTERVAL_S) == 7
    assert limiter.effective_cap(now_s=later_s + 10 * INTERVAL_S) == 16
    assert limiter.effective_cap(now_s=later_s + 18 * INTERVAL_S) == 24
    assert limiter.effective_cap(now_s=later_s + 1000 * INTERVAL_S) == 24


def test_doubtful_holds_are_left_out_of_the_aimd_cut_and_never_freeze_admission(
    store: JobStore, limiter: SlotLimiter
) -> None:
    # Given 8 held slots: 4 for doubtful POSTs (until far ahead), 4 for tasks known to run
    ids = fill(store, 20)
    held = limiter.admit(now_s=NOW_S, max_jobs=8)
    for job_id in held[:4]:
        limiter.hold_doubtful(job_id, DEFAULT, until_s=NOW_S + 60.0)
    assert limiter.doubt().count == 4
    # When BFL answers 429 (someone else on the key, or a doubtful task that does exist)
    cap = limiter.rate_limited(now_s=NOW_S)
    # Then the cut is half of the 4 known tasks, not of the 8 held
    assert cap == 2
    # And once 3 of the known tasks end, a slot is free at once (2 known + 4 holds = 6 allowed):
    # counting the holds in the cut froze the key here until the cap grew back above them
    release_all(limiter, store, held[4:7])
    assert limiter.admit(now_s=NOW_S + 0.1) == [ids[8]]
    # And a released doubtful hold leaves the doubt set with its slot
    assert limiter.release(held[0], DEFAULT)
    doubt = limiter.doubt()
    assert doubt.count == 3
    assert doubt.first_end_s == doubt.last_end_s == NOW_S + 60.0


def test_a_doubtful_hold_is_set_exactly_and_cleared_when_its_task_is_known(
    store: JobStore, limiter: SlotLimiter
) -> None:
    fill(store, 1)
    [job_id] = limiter.admit(now_s=NOW_S)
    # A hold shorter than the admission lease replaces it (the old rule only ever lengthened)
    limiter.hold_doubtful(job_id, DEFAULT, until_s=NOW_S + 5.0)
    assert limiter.expired(now_s=NOW_S + 5.001) == [(job_id, DEFAULT)]
    limiter.clear_doubt(job_id)
    assert limiter.doubt().count == 0
    assert limiter.held() == 1  # still leased: its task is known to run


def test_a_refusal_is_recorded_for_status_and_counted(limiter: SlotLimiter) -> None:
    assert limiter.last_refusal() is None
    limiter.refused(now_s=NOW_S, detail="BFL answered 503")
    refusal = limiter.last_refusal()
    assert refusal is not None
    assert (refusal.at_s, refusal.detail) == (NOW_S, "BFL answered 503")
    assert limiter.counters()["refused_unavailable"] == 1


def test_a_429_with_nothing_held_leaves_a_cap_of_one(limiter: SlotLimiter) -> None:
    assert limiter.rate_limited(now_s=NOW_S) == 1


@pytest.mark.parametrize(
    "offset_s",
    [0.0, 0.1, 4.999, 5.0, 5.001, 12.5, 29.999999, 30.0, 37.5, 59.9, 60.0, 61.0, 600.0],
)
def test_the_python_and_lua_effective_caps_agree(
    store: JobStore, limiter: SlotLimiter, offset_s: float
) -> None:
    # Given a cap cut to 12 at NOW_S (24 held then), nothing held now, and 60 jobs waiting
    fill(store, 60)
    holders = [f"x{i}" for i in range(24)]
    for job_id in holders:
        limiter.hold(job_id, DEFAULT, now_s=NOW_S)
    assert limiter.rate_limited(now_s=NOW_S) == 12
    for job_id in holders:
        limiter.release(job_id, DEFAULT)

    # When admission runs at a later time
    now_s = NOW_S + offset_s
    expected = limiter.effective_cap(now_s=now_s)
    admitted = limiter.admit(now_s=now_s)

    # Then it admits exactly the cap Python computes
    assert len(admitted) == expected


def test_a_pause_stops_admission_until_resumed(store: JobStore, limiter: SlotLimiter) -> None:
    # Given waiting jobs and a pause with no end (out of credits)
    fill(store, 3)
    limiter.pause(PauseKind.OUT_OF_CREDITS, "402 from BFL")

    # Then nothing is admitted, whatever the time, until resume
    pause = limiter.paused(now_s=NOW_S + 10**6)
    assert pause is not None
    assert (pause.kind, pause.detail) == (PauseKind.OUT_OF_CREDITS, "402 from BFL")
    assert pause.until_s is None
    assert str(pause) == "out of credits (402): 402 from BFL"
    assert limiter.admit(now_s=NOW_S + 10**6) == []
    limiter.resume()
    assert limiter.paused(now_s=NOW_S) is None
    assert limiter.admit(now_s=NOW_S) == ["j0", "j1", "j2"]


def test_a_pause_with_an_end_lifts_by_itself(store: JobStore, limiter: SlotLimiter) -> None:
    fill(store, 1)
    limiter.pause(PauseKind.RETRY_AFTER, until_s=NOW_S + 30)
    pause = limiter.paused(now_s=NOW_S + 29)
    assert pause is not None
    assert pause.until_s == NOW_S + 30
    assert limiter.admit(now_s=NOW_S + 29) == []
    assert limiter.paused(now_s=NOW_S + 31) is None
    assert limiter.admit(now_s=NOW_S + 31) == ["j0"]


def kind_at(limiter: SlotLimiter, now_s: float) -> PauseKind | None:
    pause = limiter.paused(now_s=now_s)
    return None if pause is None else pause.kind


def test_a_retry_after_pauses_admission_until_then(store: JobStore, limiter: SlotLimiter) -> None:
    # Given waiting jobs
    fill(store, 3)

    # When a 429 says retry after 30 s
    limiter.rate_limited(now_s=NOW_S, retry_after_s=30)

    # Then nothing is admitted before then, and admission resumes after it
    assert kind_at(limiter, NOW_S + 29.9) is PauseKind.RETRY_AFTER
    assert limiter.admit(now_s=NOW_S + 29.9) == []
    assert limiter.paused(now_s=NOW_S + 30.1) is None
    # (the cap, cut to 1 as nothing was held, has climbed back to 1 + 6 by then)
    assert limiter.admit(now_s=NOW_S + 30.1) == ["j0", "j1", "j2"]
    # And a shorter Retry-After does not shorten a longer pause
    limiter.rate_limited(now_s=NOW_S + 40, retry_after_s=60)
    limiter.rate_limited(now_s=NOW_S + 41, retry_after_s=5)
    assert kind_at(limiter, NOW_S + 99) is PauseKind.RETRY_AFTER


def test_a_retry_after_never_ends_an_open_ended_pause(limiter: SlotLimiter) -> None:
    limiter.pause(PauseKind.OUT_OF_CREDITS)
    limiter.rate_limited(now_s=NOW_S, retry_after_s=5)
    pause = limiter.paused(now_s=NOW_S + 10**6)
    assert pause is not None
    assert pause.kind is PauseKind.OUT_OF_CREDITS


def test_scripts_may_build_keys_by_appending_the_name_to_the_empty_name_key() -> None:
    # admit.lua relies on it (see workers/keys.py)
    assert keys.job("") + "j1" == keys.job("j1")
    assert keys.batch("") + "b1" == keys.batch("b1")
    assert keys.backlog(LABEL, "") + KONTEXT == keys.backlog(LABEL, KONTEXT)
    assert keys.group_slots(LABEL, "") + KONTEXT == keys.group_slots(LABEL, KONTEXT)


# --- invariant 1 under concurrency ---------------------------------------------------------

WORKERS = 8
RUN_S = 1.5


class CapMonitor(threading.Thread):
    """Samples the slot sets' sizes as fast as it can until stopped; keeps the maxima."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.max_key = 0
        self.max_kontext = 0
        self.samples = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        try:
            while not self.stop.is_set():
                pipe = client.pipeline(transaction=True)
                pipe.zcard(keys.slots(LABEL))
                pipe.zcard(keys.group_slots(LABEL, KONTEXT))
                key_held, kontext_held = pipe.execute()
                self.max_key = max(self.max_key, key_held)
                self.max_kontext = max(self.max_kontext, kontext_held)
                self.samples += 1
        finally:
            client.close()


@pytest.fixture
def monitor(redis_url: str) -> Iterator[CapMonitor]:
    watcher = CapMonitor(redis_url)
    watcher.start()
    yield watcher
    watcher.stop.set()
    watcher.join(timeout=5)


def worker_loop(
    url: str, n: int, deadline: float, admitted: list[str], enqueued: list[str], errors: list[Any]
) -> None:
    """Admit, hold briefly, finish and release, then enqueue a new job in the same group."""
    client = redis.Redis.from_url(url, decode_responses=True)
    store = JobStore(client)
    limiter = SlotLimiter(client, label=LABEL, caps=CAPS)
    rng = random.Random(n)
    count = 0
    try:
        while time.monotonic() < deadline:
            got = limiter.admit(now_s=time.time(), max_jobs=8)
            admitted.extend(got)
            time.sleep(rng.uniform(0, 0.004))
            for job_id in got:
                group = job_id.split("/")[0]
                assert store.transition(
                    job_id, State.FAILED, from_states=[State.ADMITTED], now_s=time.time()
                )
                assert limiter.release(job_id, group)
                new_id = f"{group}/w{n}/{count}"
                count += 1
                assert store.enqueue(new_job(new_id, group=group), now_s=time.time())
                enqueued.append(new_id)
    except Exception as exc:  # reported to the test thread
        errors.append(exc)
    finally:
        client.close()


def test_concurrent_admission_never_exceeds_the_caps_nor_admits_a_job_twice(
    redis_url: str, store: JobStore, limiter: SlotLimiter, monitor: CapMonitor
) -> None:
    # Given 40 kontext-max and 40 other jobs waiting
    enqueued = [f"{group}/seed/{i}" for group in (KONTEXT, DEFAULT) for i in range(40)]
    for job_id in enqueued:
        store.enqueue(new_job(job_id, group=job_id.split("/")[0]), now_s=time.time())

    # When 8 workers, each with its own client, admit, hold, release and enqueue for 1.5 s
    admitted: list[str] = []
    errors: list[Any] = []
    deadline = time.monotonic() + RUN_S
    workers = [
        threading.Thread(
            target=worker_loop, args=(redis_url, n, deadline, admitted, enqueued, errors)
        )
        for n in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=RUN_S + 10)
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []

    # Then the monitor never saw more leases than a cap, though the caps were reached
    monitor.stop.set()
    monitor.join(timeout=5)
    assert monitor.samples > 100
    assert monitor.max_key <= 24
    assert monitor.max_kontext <= 6
    assert monitor.max_key >= 20
    assert monitor.max_kontext == 6

    # And draining the rest, every enqueued job was admitted exactly once
    while batch := limiter.admit(now_s=time.time()):
        admitted.extend(batch)
        for job_id in batch:
            limiter.release(job_id, job_id.split("/")[0])
    assert len(admitted) == len(set(admitted))
    assert set(admitted) == set(enqueued)
    assert limiter.held() == 0


def test_a_requeue_of_an_unsent_job_drops_its_submit_marker_in_the_same_step_and_only_then(
    limiter: SlotLimiter, store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given two admitted jobs that carry a submit marker
    fill(store, 2)
    assert limiter.admit(now_s=NOW_S) == ["j0", "j1"]
    for job_id in ("j0", "j1"):
        redis_client.hset(keys.job(job_id), "submitting_at", str(NOW_S))
    # When one is requeued as certainly unsent and the other as the sweep requeues
    assert limiter.requeue_front("j0", DEFAULT, now_s=NOW_S, reason="402", unsent=True)
    assert limiter.requeue_front("j1", DEFAULT, now_s=NOW_S, reason="lease lapsed")
    # Then only the unsent one lost its marker, with the move
    assert redis_client.hget(keys.job("j0"), "submitting_at") is None
    assert redis_client.hget(keys.job("j1"), "submitting_at") == str(NOW_S)
    assert redis_client.hget(keys.job("j0"), "state") == "queued"
