"""The whole system: real `fluxq worker` processes, a real Redis, the simulator over loopback.

Judged by the simulator's own counters: maximum active tasks, duplicate submits, downloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from fluxq.tasks.enqueue import enqueue
from tests.support.cluster import Cluster
from tests.support.env import KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ENDPOINTS = ("flux-pro-1.1", "flux-dev", "flux-kontext-max")


def request_for(endpoint: str, i: int) -> dict[str, object]:
    if endpoint == "flux-kontext-max":
        return {"prompt": f"job {i}: a lighthouse at dusk", "seed": i, "aspect_ratio": "4:3"}
    return {"prompt": f"job {i}: a lighthouse at dusk", "seed": i, "width": 512, "height": 384}


def assert_files_match_sidecars(out: Path, expected: int) -> None:
    images = sorted(p for p in out.iterdir() if p.suffix in (".jpeg", ".png", ".webp"))
    assert len(images) == expected
    for image in images:
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert hashlib.sha256(image.read_bytes()).hexdigest() == sidecar["sha256"]
        with Image.open(image) as img:
            img.verify()
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len({json.loads(line)["job_id"] for line in manifest}) == expected


def test_two_hundred_jobs_over_three_endpoints_finish_within_both_caps(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given one worker (main + save processes) and the account's cap of 24 (6 for kontext-max)
    cluster = make_cluster()
    # (a 100 s model, 1 s here: long enough for the submits to fill the cap even on a slow
    # machine, where enqueueing 24 jobs one by one took longer than a 300 ms task)
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 100.0}})
    cluster.start_worker()
    # When 200 jobs over three endpoints are enqueued
    for i in range(200):
        endpoint = ENDPOINTS[i % 3]
        enqueue(cluster.rt, endpoint, request_for(endpoint, i), batch="night", name=f"img-{i:03d}")
    counts = cluster.wait_terminal("night", 200, timeout_s=240)
    # Then every job is done and every file is a complete image matching its sidecar
    assert counts["done"] == 200, counts
    assert_files_match_sidecars(Path(cluster.env["FLUXQ_OUTPUT_DIR"]) / "night", 200)
    # And the simulator saw at most 24 active (6 for kontext-max), each triple submitted once
    stats = cluster.sim.stats(KEY)
    assert stats["max_active"] <= 24
    assert stats["max_active_by_group"].get("flux-kontext-max", 0) <= 6
    assert stats["submits"] == 200
    assert stats["duplicate_submits"] == 0
    assert stats["rate_limited_429"] == 0
    assert stats["max_active"] >= 20  # the cap was actually used, not serialised


def test_two_worker_processes_share_one_cap(make_cluster: Callable[..., Cluster]) -> None:
    # Given two separate worker processes on one Redis and a fluxq cap of 5
    cluster = make_cluster(FLUXQ_ACTIVE_CAP="5")
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 30.0}})
    cluster.start_worker(threads=6, save_threads=2)
    cluster.start_worker(threads=6, save_threads=2)
    # When 40 jobs are enqueued
    for i in range(40):
        enqueue(cluster.rt, "flux-dev", request_for("flux-dev", i), batch="shared")
    counts = cluster.wait_terminal("shared", 40, timeout_s=180)
    # Then all are done and the simulator never saw more than 5 active at once
    assert counts["done"] == 40, counts
    stats = cluster.sim.stats(KEY)
    assert stats["max_active"] == 5
    assert stats["duplicate_submits"] == 0


def test_a_slot_freed_by_a_poll_is_refilled_by_the_same_worker_process_without_celery(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given one worker tree and a cap of 1, so every submit after the first follows a Ready
    cluster = make_cluster(FLUXQ_ACTIVE_CAP="1")
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 20.0}})
    cluster.start_worker(threads=4, save_threads=1)
    # When 5 jobs are enqueued
    for i in range(5):
        enqueue(cluster.rt, "flux-dev", request_for("flux-dev", i), batch="refill")
    counts = cluster.wait_terminal("refill", 5, timeout_s=120)
    # Then all are done, one at a time, and the 4 submits that followed a Ready ran in the
    # process whose poller saw it (the first came through Celery from the producer)
    assert counts["done"] == 5, counts
    assert cluster.sim.stats(KEY)["max_active"] == 1
    assert cluster.rt.limiter.counters().get("inline_submits") == 4
    # and the saves went, through the key's save queue, to the save process the user asked for
    assert cluster.rt.limiter.counters().get("inline_saves") == 5


def test_with_one_worker_process_the_image_its_poller_saw_ready_is_saved_there(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given the default tree: one worker process serving submit, poll and save
    cluster = make_cluster()
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 5.0}})
    cluster.start_worker(threads=4, save_threads=0)
    # When 6 jobs run
    for i in range(6):
        enqueue(cluster.rt, "flux-dev", request_for("flux-dev", i), batch="here")
    counts = cluster.wait_terminal("here", 6, timeout_s=120)
    # Then every image was saved by the process that polled it, with no save message
    assert counts["done"] == 6, counts
    assert cluster.rt.limiter.counters().get("inline_saves") == 6
    assert cluster.sim.stats(KEY)["duplicate_submits"] == 0


def test_a_worker_killed_mid_batch_loses_no_job_and_submits_none_twice(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given a worker busy with 60 jobs of a 1 s model (cap 8, short leases for a quick recovery)
    cluster = make_cluster(FLUXQ_ACTIVE_CAP="8", FLUXQ_LEASE_TTL_S="5")
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 100.0}})
    first = cluster.start_worker(threads=6, save_threads=2)
    for i in range(60):
        enqueue(cluster.rt, "flux-dev", request_for("flux-dev", i), batch="crash")
    deadline = time.monotonic() + 60
    while cluster.rt.store.batch_counts("crash")["done"] < 10:
        assert time.monotonic() < deadline, "no progress before the crash"
        time.sleep(0.05)
    # When the worker processes are killed without warning (SIGKILL: no cleanup, no acks)
    kill_tree(first.pid)
    # And a new worker starts
    cluster.start_worker(threads=6, save_threads=2)
    counts = cluster.wait_terminal("crash", 60, timeout_s=180)
    # Then every job reached exactly one terminal state; any job whose POST may have been in
    # flight at the kill is failed as uncertain (counted), never submitted twice
    assert counts["done"] + counts["failed"] == 60, counts
    assert counts["failed"] == counts["uncertain"], counts
    stats = cluster.sim.stats(KEY)
    assert stats["duplicate_submits"] == 0
    assert stats["max_active"] <= 8
    assert_files_match_sidecars(Path(cluster.env["FLUXQ_OUTPUT_DIR"]) / "crash", counts["done"])


def kill_tree(pid: int) -> None:
    """SIGKILL a supervisor and its worker children (found through /proc), by their own pids."""
    children = [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid
    ]
    for target in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def _ppid(proc: Path) -> int | None:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_polls_are_no_celery_messages_and_a_pending_job_waits_in_the_poll_queue(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given a job of a slow model (2 s here), polled several times by one worker
    cluster = make_cluster()
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 200.0}})
    cluster.start_worker(threads=4, save_threads=1)
    job_id = enqueue(cluster.rt, "flux-dev", {"prompt": "a slow heron", "seed": 1}, batch="fl")

    # When it is watched as it waits, over several polls
    def polls_of_job() -> int:
        job = cluster.rt.store.get(job_id)
        assert job is not None
        return job.poll_attempts

    deadline = time.monotonic() + 60
    dues: set[float] = set()
    poll_messages = 0
    while polls_of_job() < 3:
        assert time.monotonic() < deadline, f"too few polls: {polls_of_job()}"
        due = cluster.rt.polls.due_s(job_id)
        if due is not None:
            dues.add(due)
        queued = cluster.rt.redis.lrange("fluxq.poll", 0, -1)
        poll_messages += sum('"fluxq.poll"' in raw for raw in queued)
        poll_messages += sum('"fluxq.poll"' in raw for raw in cluster.rt.redis.hvals("unacked"))
        time.sleep(0.02)
    # Then it waited in the key's poll queue with a new due time after each poll, and no poll
    # was a Celery message (no publish, consume, ack or Flower event per poll)
    assert len(dues) >= 2, dues
    assert poll_messages == 0
    counts = cluster.wait_terminal("fl", 1, timeout_s=60)
    assert counts.get("done") == 1, counts
    # And once it is done it waits for no poll
    assert cluster.rt.polls.due_s(job_id) is None
