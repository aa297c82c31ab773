"""The job store: records, compare-and-set transitions, batch counters, backlog order."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxq.workers.state import keys
from fluxq.workers.state.jobs import DEFAULT_PRIORITY, MAX_PRIORITY, TRANSITIONS, NewJob, State
from fluxq.workers.state.store import MAX_SEQ, JobStore, backlog_score

NOW_S = 1_700_000_000.25
LABEL = "abc123abc123"
STATES = list(State)
COUNTED = [s.value for s in State]


def new_job(
    job_id: str,
    *,
    batch: str = "b1",
    priority: int = DEFAULT_PRIORITY,
    group: str = keys.DEFAULT_GROUP,
) -> NewJob:
    return NewJob(
        job_id=job_id,
        endpoint="flux-dev",
        request_json=json.dumps({"prompt": f"a cat number {job_id}"}),
        batch=batch,
        name=f"img-{job_id}",
        priority=priority,
        group=group,
        key_label=LABEL,
    )


@pytest.fixture
def store(redis_client: redis.Redis[str]) -> JobStore:
    return JobStore(redis_client, terminal_ttl_s=3600)


def read_event(pubsub: Any) -> dict[str, Any]:
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    assert message is not None, "no event published"
    event: dict[str, Any] = json.loads(message["data"])
    return event


def test_enqueue_creates_a_queued_record_with_counters_a_backlog_entry_and_an_event(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given a subscriber on the events channel
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=2.0) is not None  # the subscribe confirmation
    try:
        # When a job is enqueued
        created = store.enqueue(new_job("j1", priority=7), now_s=NOW_S)

        # Then it is a queued record, counted in its batch, waiting in its backlog, announced
        assert created
        job = store.get("j1")
        assert job is not None
        assert job.state is State.QUEUED
        assert job.request == {"prompt": "a cat number j1"}
        assert (job.priority, job.group, job.key_label, job.name) == (7, "default", LABEL, "img-j1")
        assert job.created_at == NOW_S
        assert job.times == {"queued": NOW_S}
        assert store.batch_counts("b1")["queued"] == 1
        assert store.batch_counts("b1")["total"] == 1
        assert redis_client.zrange(keys.backlog(LABEL, "default"), 0, -1) == ["j1"]
        assert redis_client.smembers(keys.groups(LABEL)) == {"default"}
        assert store.batches() == ["b1"]
        event = read_event(pubsub)
        assert event == {"job": "j1", "batch": "b1", "state": "queued", "from": None, "ts": NOW_S}
    finally:
        pubsub.close()


def test_enqueue_with_an_existing_job_id_changes_nothing_and_returns_false(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given an enqueued job that has moved on
    assert store.enqueue(new_job("j1"), now_s=NOW_S)
    assert store.transition("j1", State.ADMITTED, from_states=[State.QUEUED], now_s=NOW_S + 1)
    before = redis_client.hgetall(keys.job("j1"))

    # When the same job id is enqueued again, even with other details
    again = store.enqueue(new_job("j1", batch="b2", priority=9), now_s=NOW_S + 2)

    # Then nothing changed: record, counters, backlog, sequence
    assert again is False
    assert redis_client.hgetall(keys.job("j1")) == before
    assert store.batch_counts("b1")["total"] == 1
    assert store.batch_counts("b2")["total"] == 0
    assert redis_client.zcard(keys.backlog(LABEL, "default")) == 0
    assert redis_client.get(keys.SEQ) == "1"
    assert store.batches() == ["b1"]


def test_a_transition_from_an_allowed_state_moves_the_job_its_counters_and_publishes(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given an admitted job and a subscriber
    store.enqueue(new_job("j1"), now_s=NOW_S)
    store.transition("j1", State.ADMITTED, from_states=[State.QUEUED], now_s=NOW_S + 1)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=2.0) is not None
    try:
        # When it moves admitted → submitted with fields
        moved = store.transition(
            "j1",
            State.SUBMITTED,
            from_states=[State.ADMITTED],
            now_s=NOW_S + 2,
            fields={"bfl_id": "t-1", "polling_url": "https://api.bfl.ai/v1/get_result?id=t-1"},
        )

        # Then state, time, fields and counters moved, and the event says so
        assert moved
        job = store.get("j1")
        assert job is not None
        assert job.state is State.SUBMITTED
        assert job.bfl_id == "t-1"
        assert job.times == {"queued": NOW_S, "admitted": NOW_S + 1, "submitted": NOW_S + 2}
        counts = store.batch_counts("b1")
        assert (counts["queued"], counts["admitted"], counts["submitted"]) == (0, 0, 1)
        event = read_event(pubsub)
        assert event == {
            "job": "j1",
            "batch": "b1",
            "state": "submitted",
            "from": "admitted",
            "ts": NOW_S + 2,
        }
    finally:
        pubsub.close()


def test_a_transition_from_any_other_state_changes_nothing(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given a queued job
    store.enqueue(new_job("j1"), now_s=NOW_S)
    before = redis_client.hgetall(keys.job("j1"))

    # When a transition expects another state
    moved = store.transition(
        "j1",
        State.READY,
        from_states=[State.SUBMITTED],
        now_s=NOW_S + 1,
        fields={"path": "x.png"},
        reason="r",
    )

    # Then it fails and nothing changed
    assert moved is False
    assert redis_client.hgetall(keys.job("j1")) == before
    assert store.batch_counts("b1")["queued"] == 1
    assert store.transition("missing", State.CANCELLED, now_s=NOW_S) is False


def test_a_terminal_transition_sets_a_ttl_and_takes_a_queued_job_out_of_its_backlog(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given two queued jobs
    store.enqueue(new_job("j1"), now_s=NOW_S)
    store.enqueue(new_job("j2"), now_s=NOW_S)

    # When one is cancelled with a reason
    assert store.transition(
        "j1", State.CANCELLED, from_states=[State.QUEUED], now_s=NOW_S + 1, reason="cancelled"
    )

    # Then it expires in terminal_ttl_s, has left the backlog, and keeps its reason
    ttl_ms = redis_client.pttl(keys.job("j1"))
    assert 3_590_000 < ttl_ms <= 3_600_000
    assert redis_client.pttl(keys.job("j2")) == -1
    assert redis_client.zrange(keys.backlog(LABEL, "default"), 0, -1) == ["j2"]
    job = store.get("j1")
    assert job is not None
    assert job.state.terminal
    assert job.reason == "cancelled"
    assert store.batch_counts("b1")["cancelled"] == 1


def test_a_move_back_to_queued_puts_the_job_at_its_arrival_place_in_its_backlog(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given j1 admitted (out of the backlog) and j2, j3 queued after it
    for job_id in ("j1", "j2", "j3"):
        store.enqueue(new_job(job_id), now_s=NOW_S)
    store.transition("j1", State.ADMITTED, from_states=[State.QUEUED], now_s=NOW_S)
    assert redis_client.zrange(keys.backlog(LABEL, "default"), 0, -1) == ["j2", "j3"]

    # When j1 moves back to queued
    assert store.transition("j1", State.QUEUED, from_states=[State.ADMITTED], now_s=NOW_S + 1)

    # Then it waits again, ahead of the jobs that arrived after it
    assert redis_client.zrange(keys.backlog(LABEL, "default"), 0, -1) == ["j1", "j2", "j3"]


transitions = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),
        st.sets(st.sampled_from(STATES), min_size=1, max_size=3),
        st.sampled_from(STATES),
    ),
    max_size=25,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=transitions)
def test_counters_always_sum_to_total_and_match_the_records_across_any_transitions(
    redis_client: redis.Redis[str], steps: list[tuple[int, set[State], State]]
) -> None:
    # Given four queued jobs in one batch (a fresh database per example)
    redis_client.flushdb()
    store = JobStore(redis_client)
    for i in range(4):
        store.enqueue(new_job(f"j{i}"), now_s=NOW_S)

    for n, (i, from_states, to) in enumerate(steps):
        # When any compare-and-set transition is tried
        allowed = {state for state in from_states if to in TRANSITIONS[state]}
        if allowed:
            store.transition(f"j{i}", to, from_states=allowed, now_s=NOW_S + n)
        else:  # a move the table forbids is refused before Redis is touched
            with pytest.raises(ValueError, match="transition table"):
                store.transition(f"j{i}", to, from_states=from_states, now_s=NOW_S + n)

        # Then the counters sum to the total and equal the records' states
        counts = store.batch_counts("b1")
        assert sum(counts[name] for name in COUNTED) == counts["total"] == 4
        jobs = [store.get(f"j{k}") for k in range(4)]
        actual = {name: sum(1 for j in jobs if j and j.state == name) for name in COUNTED}
        assert {name: counts[name] for name in COUNTED} == actual
        # And a job is in its backlog exactly while it is queued
        waiting = set(redis_client.zrange(keys.backlog(LABEL, "default"), 0, -1))
        assert waiting == {j.job_id for j in jobs if j and j.state is State.QUEUED}


def test_batch_counts_of_a_thousand_pipelined_jobs_come_from_the_counters(
    store: JobStore,
) -> None:
    # Given 1000 jobs enqueued through pipelined script calls, and 10 of them cancelled
    created = store.enqueue_many((new_job(f"j{i}", batch="big") for i in range(1000)), now_s=NOW_S)
    for i in range(10):
        store.transition(f"j{i}", State.CANCELLED, from_states=[State.QUEUED], now_s=NOW_S)

    # When the batch is counted
    counts = store.batch_counts("big")

    # Then every state is present, and the numbers are right
    assert created == 1000
    assert counts == {
        "queued": 990,
        "admitted": 0,
        "submitted": 0,
        "ready": 0,
        "done": 0,
        "failed": 0,
        "cancelled": 10,
        "total": 1000,
        "uncertain": 0,
    }
    assert store.enqueue_many([new_job("j5", batch="big")], now_s=NOW_S) == 0


order_keys = st.tuples(
    st.integers(min_value=0, max_value=MAX_PRIORITY),
    st.integers(min_value=0, max_value=MAX_SEQ),
    st.booleans(),
)


@settings(max_examples=200)
@given(a=order_keys, b=order_keys)
def test_backlog_scores_order_by_priority_then_front_then_arrival(
    a: tuple[int, int, bool], b: tuple[int, int, bool]
) -> None:
    # Given two jobs' (priority, arrival, fronted)
    def rank(key: tuple[int, int, bool]) -> tuple[int, int, int]:
        priority, seq, front = key
        return (-priority, 0 if front else 1, seq)

    # When both are scored
    score_a = backlog_score(a[0], a[1], front=a[2])
    score_b = backlog_score(b[0], b[1], front=b[2])

    # Then higher priority runs first, then fronted jobs, then arrival order, scores exact
    assert (score_a < score_b) == (rank(a) < rank(b))
    assert (score_a == score_b) == (rank(a) == rank(b))
    assert score_a == int(score_a)


@given(priority=st.integers(min_value=0, max_value=MAX_PRIORITY), seq=st.integers(0, MAX_SEQ))
def test_backlog_scores_never_cross_into_another_priority_band(priority: int, seq: int) -> None:
    # Given the extremes of the next lower priority band
    if priority > 0:
        lower_first = backlog_score(priority - 1, 0, front=True)
        # Then any score of this band, fronted or not, is ahead of all of them
        assert backlog_score(priority, seq) < lower_first
        assert backlog_score(priority, seq, front=True) < lower_first


def test_backlog_score_rejects_priorities_and_sequences_outside_its_range() -> None:
    with pytest.raises(ValueError, match="priority"):
        backlog_score(MAX_PRIORITY + 1, 1)
    with pytest.raises(ValueError, match="seq"):
        backlog_score(0, MAX_SEQ + 1)


def test_the_lua_backlog_score_equals_the_python_one(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given jobs of every priority enqueued after the arrival counter is large
    redis_client.set(keys.SEQ, 2**40)
    for priority in range(MAX_PRIORITY + 1):
        store.enqueue(new_job(f"p{priority}", priority=priority), now_s=NOW_S)

    # Then each backlog score is backlog_score(priority, its seq)
    for priority in range(MAX_PRIORITY + 1):
        job = store.get(f"p{priority}")
        assert job is not None
        seq = int(job_field(redis_client, f"p{priority}", "seq"))
        score = redis_client.zscore(keys.backlog(LABEL, "default"), f"p{priority}")
        assert score == backlog_score(priority, seq)


def job_field(client: redis.Redis[str], job_id: str, field: str) -> str:
    value = client.hget(keys.job(job_id), field)
    assert value is not None
    return value


def test_mark_uncertain_flags_and_counts_a_job_once(store: JobStore) -> None:
    # Given a submitted job
    store.enqueue(new_job("j1"), now_s=NOW_S)
    store.transition("j1", State.ADMITTED, from_states=[State.QUEUED], now_s=NOW_S)

    # When it is marked uncertain three times (and a missing job once)
    for _ in range(3):
        store.mark_uncertain("j1")
    store.mark_uncertain("missing")

    # Then it is flagged and counted once
    job = store.get("j1")
    assert job is not None
    assert job.uncertain
    assert store.batch_counts("b1")["uncertain"] == 1


def test_update_incr_and_clear_fields_touch_only_existing_jobs(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given one job
    store.enqueue(new_job("j1"), now_s=NOW_S)

    # When fields are set, counted and cleared
    store.update("j1", {"cost": 2.5, "seed": 42, "submitting_at": NOW_S, "refetched": 1})
    assert store.incr("j1", "submit_attempts") == 1
    assert store.incr("j1", "submit_attempts", 2) == 3
    store.update("j1", {"bfl_id": "t-1"})
    store.clear_fields("j1", "bfl_id")

    # Then the record reads back typed
    job = store.get("j1")
    assert job is not None
    assert (job.cost, job.seed, job.submitting_at, job.submit_attempts) == (2.5, 42, NOW_S, 3)
    assert (job.bfl_id, job.poll_attempts, job.not_found_count, job.sha256) == (None, 0, 0, None)
    assert job.refetched
    # And a field the record does not declare is refused
    with pytest.raises(ValueError, match="not a job field"):
        store.update("j1", {"note": "hi"})

    # And a missing job stays missing
    store.update("ghost", {"cost": 1})
    store.clear_fields("ghost", "cost")
    with pytest.raises(KeyError):
        store.incr("ghost", "poll_attempts")
    assert redis_client.exists(keys.job("ghost")) == 0


def test_start_submit_counts_the_attempt_and_sets_the_marker_only_on_an_admitted_job(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    store.enqueue(new_job("j1"), now_s=NOW_S)
    # A queued job is not sent
    assert store.start_submit("j1", now_s=NOW_S) == (0, 0)
    store.transition("j1", State.ADMITTED, now_s=NOW_S)
    assert store.start_submit("j1", now_s=NOW_S + 1) == (1, 0)
    job = store.get("j1")
    assert job is not None
    assert (job.submit_attempts, job.submitting_at) == (1, NOW_S + 1)
    # A second delivery finds the marker: nothing written, nothing to send
    assert store.start_submit("j1", now_s=NOW_S + 2) == (0, 0)
    store.clear_fields("j1", "submitting_at")
    assert store.start_submit("j1", now_s=NOW_S + 5) == (2, 0)
    # A cancelled job is not sent, and a missing one is not created
    store.transition("j1", State.CANCELLED, now_s=NOW_S + 6)
    assert store.start_submit("j1", now_s=NOW_S + 7) == (0, 0)
    assert store.start_submit("ghost", now_s=NOW_S) == (0, 0)
    assert redis_client.exists(keys.job("ghost")) == 0


def test_a_move_can_clear_fields_in_the_same_step_and_a_refused_one_clears_none(
    store: JobStore,
) -> None:
    store.enqueue(new_job("j1"), now_s=NOW_S)
    store.transition("j1", State.ADMITTED, now_s=NOW_S)
    store.start_submit("j1", now_s=NOW_S)
    # A refused move (the job is not queued) leaves the marker
    refused = store.transition(
        "j1", State.CANCELLED, from_states=[State.QUEUED], now_s=NOW_S, clear=["submitting_at"]
    )
    assert not refused
    before = store.get("j1")
    assert before is not None
    assert before.submitting_at == NOW_S
    # The move to submitted records the id and drops the marker at once
    moved = store.transition(
        "j1", State.SUBMITTED, now_s=NOW_S + 1, fields={"bfl_id": "t-1"}, clear=["submitting_at"]
    )
    assert moved
    job = store.get("j1")
    assert job is not None
    assert (job.state, job.bfl_id, job.submitting_at) == (State.SUBMITTED, "t-1", None)
    with pytest.raises(ValueError, match="state"):
        store.transition("j1", State.READY, now_s=NOW_S, clear=["state"])


def test_a_move_after_the_record_is_gone_fails_though_its_keys_were_remembered(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given a job read once (its batch, key and group are remembered), then deleted
    store.enqueue(new_job("j1", batch="b7"), now_s=NOW_S)
    assert store.get("j1") is not None
    redis_client.delete(keys.job("j1"))
    # Then a move finds it missing and writes nothing, not even the batch counters
    before = redis_client.hgetall(keys.batch("b7"))
    assert not store.transition("j1", State.ADMITTED, now_s=NOW_S)
    assert redis_client.exists(keys.job("j1")) == 0
    assert redis_client.hgetall(keys.batch("b7")) == before


def test_update_submitted_writes_typed_fields_in_one_command(store: JobStore) -> None:
    store.enqueue(new_job("j1"), now_s=NOW_S)
    store.update_submitted("j1", {"last_pending_s": 1.25, "progress": 0.5})
    job = store.get("j1")
    assert job is not None
    assert job.last_pending_s == 1.25
    with pytest.raises(ValueError, match="not a job field"):
        store.update_submitted("j1", {"note": "hi"})


def test_fields_that_carry_counters_or_keys_cannot_be_written_directly(store: JobStore) -> None:
    store.enqueue(new_job("j1"), now_s=NOW_S)
    with pytest.raises(ValueError, match="state"):
        store.update("j1", {"state": "done"})
    with pytest.raises(ValueError, match="batch"):
        store.transition(
            "j1", State.ADMITTED, from_states=[State.QUEUED], now_s=NOW_S, fields={"batch": "x"}
        )
    with pytest.raises(ValueError, match="uncertain"):
        store.incr("j1", "uncertain")
    with pytest.raises(ValueError, match="priority"):
        store.enqueue(new_job("j2", priority=MAX_PRIORITY + 1), now_s=NOW_S)


def test_jobs_in_state_scans_for_a_batchs_jobs_in_one_state(store: JobStore) -> None:
    # Given jobs of two batches, some admitted
    for i in range(30):
        store.enqueue(new_job(f"a{i}", batch="a"), now_s=NOW_S)
        store.enqueue(new_job(f"b{i}", batch="b"), now_s=NOW_S)
    for i in range(0, 30, 3):
        store.transition(f"a{i}", State.ADMITTED, from_states=[State.QUEUED], now_s=NOW_S)

    # Then the scan finds exactly those, up to the limit
    assert sorted(store.jobs_in_state("a", State.ADMITTED, 100)) == sorted(
        f"a{i}" for i in range(0, 30, 3)
    )
    assert len(store.jobs_in_state("b", State.QUEUED, 7)) == 7
    assert store.jobs_in_state("b", State.DONE, 10) == []


def test_batches_are_listed_oldest_first(store: JobStore) -> None:
    store.enqueue(new_job("j1", batch="night"), now_s=NOW_S + 5)
    store.enqueue(new_job("j2", batch="morning"), now_s=NOW_S + 9)
    store.enqueue(new_job("j3", batch="night"), now_s=NOW_S + 20)
    assert store.batches() == ["night", "morning"]


def test_a_move_takes_the_job_out_of_what_it_leaves_in_the_same_step_and_a_refused_one_does_not(
    store: JobStore, redis_client: redis.Redis[str]
) -> None:
    # Given a submitted job holding a slot lease (a zset) and a lane slot (a set)
    store.enqueue(new_job("j1"), now_s=NOW_S)
    assert store.transition("j1", State.ADMITTED, now_s=NOW_S)
    assert store.transition("j1", State.SUBMITTED, now_s=NOW_S)
    redis_client.zadd(keys.slots(LABEL), {"j1": NOW_S + 60, "other": NOW_S + 60})
    redis_client.sadd(keys.lane_slots(LABEL), "j1", "other")
    leaves = [keys.slots(LABEL), keys.lane_slots(LABEL), "fluxq:absent"]
    # When a move the table refuses names them: nothing changes
    assert not store.transition("j1", State.ADMITTED, now_s=NOW_S, leaves=leaves)
    assert redis_client.zscore(keys.slots(LABEL), "j1") is not None
    assert redis_client.sismember(keys.lane_slots(LABEL), "j1")
    # When the move to ready is made with them: the job leaves both, in that step, others stay
    assert store.transition("j1", State.READY, now_s=NOW_S, leaves=leaves)
    assert redis_client.zscore(keys.slots(LABEL), "j1") is None
    assert not redis_client.sismember(keys.lane_slots(LABEL), "j1")
    assert redis_client.zscore(keys.slots(LABEL), "other") is not None
    assert redis_client.sismember(keys.lane_slots(LABEL), "other")
