"""Writes that must be on a replica before fluxq goes on (FLUXQ_REDIS_MIN_REPLICAS): a new job, a
batch's lines, BFL's answer. A real master and replica on loopback; the replica is paused
(SIGSTOP) to make it acknowledge nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fluxq.workers.process.children import start_child
from fluxq.workers.process.embedded_redis import redis_server_binary
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import DEFAULT_PRIORITY, NewJob, State
from fluxq.workers.state.store import REPLICATED_TRIES, JobStore, ReplicaShortfall
from tests.support.net import free_port, wait_until

NOW_S = 1_700_000_000.0
WAIT_MS = 100


class Pair:
    """A master and its replica, each a redis-server of its own, stopped by their pids."""

    def __init__(self, home: Path) -> None:
        self.ports = {"master": free_port(), "replica": free_port()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for name, extra in (("master", []), ("replica", ["--replicaof", "127.0.0.1"])):
            if extra:
                extra.append(str(self.ports["master"]))
            (home / name).mkdir()
            self.processes[name] = start_child(
                [
                    redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.ports[name]),
                    "--save", "", "--appendonly", "no", "--dir", str(home / name), *extra,
                ],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        self.master = redis.Redis(port=self.ports["master"], decode_responses=True)
        self.replica = redis.Redis(port=self.ports["replica"], decode_responses=True)
        assert wait_until(self._synced, 20, interval_s=0.05), "the replica never synced"

    def _synced(self) -> bool:
        try:
            link = self.replica.info("replication").get("master_link_status")
        except redis.ConnectionError:
            return False
        return bool(link == "up")

    def pause_replica(self, paused: bool) -> None:
        self.processes["replica"].send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        self.master.close()
        self.replica.close()
        for process in self.processes.values():
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    servers = Pair(tmp_path_factory.mktemp("pair"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def store(pair: Pair) -> JobStore:
    pair.master.flushdb()
    return JobStore(pair.master, min_replicas=1, replica_wait_ms=WAIT_MS)


def new_job(job_id: str) -> NewJob:
    return NewJob(
        job_id=job_id,
        endpoint="flux-dev",
        request_json=json.dumps({"prompt": f"a heron {job_id}"}),
        batch="herons",
        name=job_id,
        priority=DEFAULT_PRIORITY,
        group=keys.DEFAULT_GROUP,
        key_label="abc123abc123",
    )


def test_a_new_job_is_on_the_replica_when_enqueue_returns(store: JobStore, pair: Pair) -> None:
    assert store.enqueue(new_job("j1"), now_s=NOW_S) is True
    # WAIT returned only once the replica held the write: it reads it at once
    assert pair.replica.hget(keys.job("j1"), "state") == State.QUEUED.value
    assert store.enqueue(new_job("j1"), now_s=NOW_S) is False  # made again: found, not made
    assert store.enqueue_many([new_job("j2"), new_job("j3")], now_s=NOW_S) == 2
    assert pair.replica.exists(keys.job("j2"), keys.job("j3")) == 2


def test_a_batch_chunk_and_bfl_answer_are_on_the_replica_when_they_return(
    store: JobStore, pair: Pair
) -> None:
    lines = [f"l{i}\timg-{i}\tflux-dev\t0.025\t{{}}" for i in range(3)]
    added = store.enqueue_lane(
        label="abc123abc123", group="", batch="herons", priority=2, entries=lines, now_s=NOW_S
    )
    assert (added.added, added.present, added.conflicts) == (3, 0, [])
    assert pair.replica.llen(keys.lane("abc123abc123", "", "herons")) == 3
    store.enqueue(new_job("j1"), now_s=NOW_S)
    assert store.transition("j1", State.ADMITTED, now_s=NOW_S)
    moved = store.transition(
        "j1", State.SUBMITTED, now_s=NOW_S, fields={"bfl_id": "task-1"}, replicated=True
    )
    assert moved
    assert pair.replica.hget(keys.job("j1"), "bfl_id") == "task-1"


def test_a_write_no_replica_confirms_raises_naming_the_setting_and_may_have_happened(
    store: JobStore, pair: Pair
) -> None:
    pair.pause_replica(True)
    try:
        started = time.monotonic()
        with pytest.raises(ReplicaShortfall) as refused:
            store.enqueue(new_job("j1"), now_s=NOW_S)
        elapsed_s = time.monotonic() - started
    finally:
        pair.pause_replica(False)
    message = str(refused.value)
    assert "job j1" in message
    assert "0 of 1" in message
    assert "FLUXQ_REDIS_MIN_REPLICAS" in message
    # It is a connection error to callers (the API's 503, the CLI's "Redis" failure), bounded
    # by the tries, each waiting WAIT_MS
    assert isinstance(refused.value, redis.ConnectionError)
    assert elapsed_s >= REPLICATED_TRIES * WAIT_MS / 1000
    # The master holds it: made again under its id it is found, not made twice
    assert pair.master.hget(keys.job("j1"), "state") == State.QUEUED.value
    assert store.enqueue(new_job("j1"), now_s=NOW_S) is False


def test_a_submit_marker_no_replica_confirms_reports_the_count(store: JobStore, pair: Pair) -> None:
    store.enqueue(new_job("j1"), now_s=NOW_S)
    assert store.transition("j1", State.ADMITTED, now_s=NOW_S)
    pair.pause_replica(True)
    try:
        attempt, acked = store.start_submit("j1", now_s=NOW_S)
    finally:
        pair.pause_replica(False)
    assert (attempt, acked) == (1, 0)
