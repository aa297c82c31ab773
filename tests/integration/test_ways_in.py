"""The ways in, as users take them: the demo, the CLI, a task sent by name from another service.

Plus invariant 5: the API key appears nowhere in Redis, Celery messages, logs or files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery

from fluxq.tasks.enqueue import enqueue
from tests.support.cluster import Cluster
from tests.support.env import KEY, clean_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_demo_runs_end_to_end_with_simulator_and_embedded_redis_and_says_so(
    tmp_path: Path,
) -> None:
    env = clean_env() | {"COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "demo", "--jobs", "9"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "no BFL_API_KEY: using the local BFL simulator" in out
    assert "no FLUXQ_REDIS_URL: using an embedded Redis" in out
    assert "9 done, 0 failed of 9" in out
    assert "9 verified against their sha256" in out
    batches = [p for p in (tmp_path / "output").iterdir() if p.is_dir()]
    assert len(batches) == 1
    assert len(list(batches[0].glob("*.json"))) == 9


def test_the_demo_refuses_to_spend_real_credits_without_yes(tmp_path: Path) -> None:
    env = clean_env() | {"BFL_API_KEY": "a-real-looking-key", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "demo", "--jobs", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert "credits" in result.stderr
    assert "a-real-looking-key" not in result.stdout + result.stderr


def test_cli_enqueue_waits_for_the_image_and_a_service_can_enqueue_by_task_name(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=2)
    # The command line, waiting for the file
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "enqueue", "--endpoint", "flux-pro-1.1",
         "--prompt", "a heron at dawn", "--width", "512", "--height", "512", "--seed", "5",
         "--batch", "cli", "--name", "heron", "--wait"],
        env=cluster.env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done job=" in result.stdout
    assert (Path(cluster.env["FLUXQ_OUTPUT_DIR"]) / "cli" / "heron.jpeg").exists()
    status = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "status", "--batch", "cli"],
        env=cluster.env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert re.search(r"\bdone\s*│\s*1\b", status.stdout), status.stdout
    assert "at BFL=0  held for doubtful POSTs=0  effective cap=24" in status.stdout
    # Another service, with only the broker URL and the task name
    other = Celery("other-service", broker=cluster.env["FLUXQ_REDIS_URL"])
    other.send_task(
        "fluxq.enqueue",
        kwargs={"endpoint": "flux-dev", "request": {"prompt": "from afar", "seed": 1},
                "job_id": "remote-1", "batch": "remote"},
        queue="fluxq.control",
    )  # fmt: skip
    counts = cluster.wait_terminal("remote", 1, timeout_s=60)
    assert counts["done"] == 1
    job = cluster.rt.store.get("remote-1")
    assert job is not None
    assert job.path is not None
    assert Path(job.path).exists()
    other.close()


def test_cli_enqueue_rejects_a_bad_request_naming_the_fields_before_anything_is_sent(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "enqueue", "--endpoint", "flux-pro-1.1",
         "--prompt", "x", "--width", "1000", "--param", "steps=3"],
        env=cluster.env | {"COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "width" in result.stderr
    assert "steps" in result.stderr
    assert cluster.sim.stats(KEY)["submits"] == 0


def test_the_api_key_never_reaches_redis_messages_logs_or_files(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Given a run with every outcome: done, moderated, an error and a 429
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=2)
    prompts = ["fine", "bad [content-moderated]", "broken [error]", "fine again"]
    for i, prompt in enumerate(prompts):
        enqueue(cluster.rt, "flux-dev", {"prompt": prompt, "seed": i}, batch="secrets")
    cluster.wait_terminal("secrets", len(prompts), timeout_s=90)
    # Then no Redis key or value (jobs, backlogs, Celery messages, events) holds the key
    client = cluster.rt.redis
    for name in client.scan_iter("*"):
        assert KEY not in name
        kind = client.type(name)
        if kind == "string":
            values = [client.get(name) or ""]
        elif kind == "hash":
            values = [f"{k}={v}" for k, v in client.hgetall(name).items()]
        elif kind == "list":
            values = client.lrange(name, 0, -1)
        elif kind in ("set",):
            values = list(client.smembers(name))
        else:
            values = [m for m, _ in client.zrange(name, 0, -1, withscores=True)]
        assert not any(KEY in v for v in values), name
    # And no worker log line or output file contains it
    cluster.stop()
    for path in [*tmp_path.rglob("*.log"), *tmp_path.rglob("*.json*")]:
        assert KEY not in path.read_text(errors="replace"), path


def test_a_redelivered_enqueue_message_without_a_job_id_creates_one_job(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Given a service that sends fluxq.enqueue without a job_id, and Celery delivering that
    # message twice (as it does when a worker dies before acking: same task id)
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=2)
    other = Celery("other-service", broker=cluster.env["FLUXQ_REDIS_URL"])
    kwargs = {"endpoint": "flux-dev", "request": {"prompt": "only once", "seed": 9}, "batch": "dup"}
    for _ in range(2):
        other.send_task("fluxq.enqueue", kwargs=kwargs, queue="fluxq.control", task_id="msg-1")
    counts = cluster.wait_terminal("dup", 1, timeout_s=60)
    time.sleep(1.0)  # let the second delivery be handled too
    other.close()
    # Then there is one job, submitted to BFL once
    assert cluster.rt.store.batch_counts("dup")["total"] == 1, counts
    assert cluster.sim.stats(KEY)["submits"] == 1
