"""With no FLUXQ_REDIS_URL every fluxq command shares one embedded Redis per data directory.

Real ``fluxq`` processes (enqueue, worker, status, redis …) with FLUXQ_DATA_DIR in the test's
own directory, the BFL simulator on loopback, and the embedded server stopped by its pid at the
end of each test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxq.client import Client
from fluxq.config.settings import load_settings
from fluxq.simulator import SimConfig, parse_latency, running_simulator
from fluxq.simulator.server import SimulatorServer
from fluxq.workers.process.embedded_redis import (
    STATE_FILE,
    aof_bytes,
    free_port,
    pid_alive,
    read_state,
)
from fluxq.workers.state import keys
from tests.support.cluster import FAST_ENV
from tests.support.embedded import (
    clean_env,
    client_of,
    embedded,
    fluxq,
    fluxq_argv,
    server_pids_in,
    stop_embedded,
    stop_process,
    wait_until,
)
from tests.support.env import KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

USING = re.compile(r"using the embedded Redis at (redis://:\*\*\*@127\.0\.0\.1:(\d+)/0)")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data dir"  # a space: the path goes through redis.conf quoted
    yield path
    stop_embedded(path)


def env_for(data_dir: Path, tmp_path: Path, sim: SimulatorServer | None = None) -> dict[str, str]:
    env = clean_env(FLUXQ_DATA_DIR=str(data_dir), FLUXQ_OUTPUT_DIR=str(tmp_path / "out"))
    env.update(FAST_ENV)
    env["BFL_API_KEY"] = KEY
    if sim is not None:
        env.update(sim.env())
    return env


def write_lines(path: Path, count: int, tag: str) -> Path:
    lines = [
        json.dumps({"id": f"l{i}", "prompt": f"{tag} prompt {i}", "seed": i}) for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def counts(data_dir: Path, batch: str) -> dict[str, int]:
    client = client_of(data_dir)
    try:
        raw = client.hgetall(keys.batch(batch))
    finally:
        client.close()
    return {k: int(float(v)) for k, v in raw.items() if k in ("total", "queued", "admitted",
            "submitted", "ready", "done", "failed", "cancelled")}  # fmt: skip


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = fluxq_argv("worker", "--threads", "4", "--loglevel", "warning")
    with log.open("ab") as out:
        # Its own session: the test can signal the whole worker tree, as a terminal would.
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def test_enqueue_worker_and_status_in_separate_processes_share_one_embedded_redis(
    data_dir: Path, tmp_path: Path, sim: SimulatorServer
) -> None:
    env = env_for(data_dir, tmp_path, sim)
    # Given two jobs enqueued by two `fluxq enqueue` processes, with no FLUXQ_REDIS_URL
    first = fluxq(env, "enqueue", "--endpoint", "flux-dev", "--prompt", "a heron",
                  "--batch", "shared", "--job-id", "shared-1")  # fmt: skip
    second = fluxq(env, "enqueue", "--endpoint", "flux-dev", "--prompt", "a fox",
                   "--batch", "shared", "--job-id", "shared-2")  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    # Then the first started the embedded Redis and the second found the same one; both said so
    used = [USING.search(run.stderr) for run in (first, second)]
    assert used[0] is not None, first.stderr
    assert used[1] is not None, second.stderr
    assert used[0].group(2) == used[1].group(2)
    assert "started it" in first.stderr
    assert "started it" not in second.stderr
    assert str(data_dir) in first.stderr
    password = embedded(data_dir).password
    for run in (first, second):
        assert password not in run.stdout + run.stderr  # the URL is never shown whole
    # And a third process sees both jobs waiting
    status = fluxq(env, "batch", "status", "shared", "--json")
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert seen["total"] == 2
    assert seen["waiting"] == 2  # enqueued, and admitted: the producer admits at once
    assert fluxq(env, "status", "--batch", "shared").returncode == 0
    # When a worker is started in a fourth process
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        # Then it runs both jobs from that same Redis
        assert wait_until(lambda: counts(data_dir, "shared").get("done") == 2, timeout_s=60), (
            counts(data_dir, "shared"),
            log.read_text(errors="replace")[-3000:],
        )
        server_pid = embedded(data_dir).pid
    finally:
        stop_process(worker)
    assert len(list((tmp_path / "out" / "shared").glob("shared-*.json"))) == 2
    assert sim.stats(KEY)["submits"] == 2
    # And the embedded Redis outlives every command that used it
    assert pid_alive(server_pid)
    assert server_pids_in(data_dir) == [server_pid]
    after = fluxq(env, "batch", "status", "shared", "--json")
    assert json.loads(after.stdout)["counts"]["done"] == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_new_worker_finishes_the_jobs_of_one_stopped_mid_run_without_paying_twice(
    data_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    # Tasks take 4 s at the simulator, so all three are at BFL when the worker goes.
    config = SimConfig(time_scale=1.0, latency=parse_latency("default=fixed:4"), rng_seed=3)
    with running_simulator(config) as sim:
        env = env_for(data_dir, tmp_path, sim)
        batch_file = write_lines(tmp_path / "three.jsonl", 3, "restart")
        submitted = fluxq(env, "batch", "submit", str(batch_file), "--endpoint", "flux-dev",
                          "--name", "three")  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        # Given a worker with all three jobs submitted to BFL and not yet done
        first = start_worker(env, tmp_path / "worker-1.log")
        try:
            assert wait_until(lambda: counts(data_dir, "three").get("submitted") == 3,
                              timeout_s=60), counts(data_dir, "three")  # fmt: skip
            # When the worker tree is stopped mid-run (SIGTERM to it, or SIGKILL to all of it)
            if sig is signal.SIGKILL:
                os.killpg(first.pid, signal.SIGKILL)
            else:
                first.send_signal(signal.SIGTERM)
            first.wait(timeout=60)
        finally:
            stop_process(first)
        assert counts(data_dir, "three").get("done", 0) < 3
        # And a new worker is started on the same (embedded) Redis
        started = time.monotonic()
        second = start_worker(env, tmp_path / "worker-2.log")
        try:
            # Then all three end done within a bound: the lease TTL (10 s) plus sweeps and work
            finished = wait_until(lambda: counts(data_dir, "three").get("done") == 3, timeout_s=45)
            took = time.monotonic() - started
        finally:
            stop_process(second)
        logs = [(tmp_path / f"worker-{n}.log").read_text(errors="replace")[-2000:] for n in (1, 2)]
        assert finished, (counts(data_dir, "three"), logs)
        assert took < 45
        # And BFL was asked for each image once
        stats = sim.stats(KEY)
        assert stats["submits"] == 3
        assert stats["duplicate_submits"] == 0
        assert counts(data_dir, "three").get("failed", 0) == 0


def test_redis_stop_then_any_command_restarts_it_with_the_jobs_still_there(
    data_dir: Path, tmp_path: Path
) -> None:
    env = env_for(data_dir, tmp_path)
    batch_file = write_lines(tmp_path / "kept.jsonl", 3, "kept")
    added = fluxq(env, "batch", "submit", str(batch_file), "--endpoint", "flux-dev",
                  "--name", "kept")  # fmt: skip
    assert added.returncode == 0, added.stderr
    first = embedded(data_dir)
    # When it is stopped
    stopped = fluxq(env, "redis", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the embedded Redis (pid {first.pid})" in stopped.stdout
    # Then its process is gone, its state file too, and its append-only file holds the data
    assert not pid_alive(first.pid)
    assert not (data_dir / STATE_FILE).exists()
    assert aof_bytes(data_dir) > 0
    # And stopping again, or asking, says it is not running
    again = fluxq(env, "redis", "stop")
    assert again.returncode == 0
    assert "not running" in again.stdout
    asked = fluxq(env, "redis", "status")
    assert asked.returncode == 1
    assert "not running" in asked.stdout
    # When another command needs Redis
    status = fluxq(env, "batch", "status", "kept", "--json")
    # Then it starts the server again, and the batch is still there, line for line
    assert status.returncode == 0, status.stderr
    assert "started it" in status.stderr
    record = json.loads(status.stdout)
    assert record["total"] == 3
    assert record["waiting"] == 3
    second = embedded(data_dir)
    assert second.pid != first.pid
    assert pid_alive(second.pid)
    # And a re-submit of the file finds every line there already
    resubmit = fluxq(env, "batch", "submit", str(batch_file), "--endpoint", "flux-dev",
                     "--name", "kept")  # fmt: skip
    assert "added 0, already there 3" in resubmit.stdout, resubmit.stdout + resubmit.stderr


def test_commands_started_at_the_same_moment_start_one_server(
    data_dir: Path, tmp_path: Path
) -> None:
    env = env_for(data_dir, tmp_path)
    # When four commands that need Redis start at once, with no server running
    runs = [
        subprocess.Popen(
            fluxq_argv("batch", "list"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    # Then exactly one started a server, and all four used it
    errs = [err for _, err in outputs]
    assert sum("started it" in err for err in errs) == 1, errs
    ports = {match.group(2) for err in errs if (match := USING.search(err))}
    assert ports == {str(embedded(data_dir).port)}
    assert server_pids_in(data_dir) == [embedded(data_dir).pid]


def test_a_stale_state_file_is_replaced(data_dir: Path, tmp_path: Path) -> None:
    env = env_for(data_dir, tmp_path)
    data_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    for pid in (dead.pid, os.getpid()):  # a dead pid; a live pid that is no Redis of this dir
        record = {"pid": pid, "port": free_port(), "password": "stale", "started_at": 1.0}
        (data_dir / STATE_FILE).write_text(json.dumps(record))
        # When a command needs Redis
        run = fluxq(env, "batch", "list")
        # Then it starts a server and records it in place of the stale one
        assert run.returncode == 0, run.stderr
        assert "started it" in run.stderr
        state = read_state(data_dir)
        assert state is not None
        assert state.pid != pid
        assert state.password != "stale"
        assert server_pids_in(data_dir) == [state.pid]
        stop_embedded(data_dir)


def test_redis_status_tells_pid_url_data_dir_aof_memory_and_jobs(
    data_dir: Path, tmp_path: Path
) -> None:
    env = env_for(data_dir, tmp_path)
    batch_file = write_lines(tmp_path / "told.jsonl", 3, "told")
    assert fluxq(env, "batch", "submit", str(batch_file), "--endpoint", "flux-dev",
                 "--name", "told").returncode == 0  # fmt: skip
    server = embedded(data_dir)
    status = fluxq(env, "redis", "status")
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert f"running (pid {server.pid}" in out
    assert f"redis://:***@127.0.0.1:{server.port}/0" in out
    assert f"data dir: {data_dir}" in out
    assert "AOF: on" in out
    assert re.search(r"memory used: [0-9.]+[KMG]", out), out
    assert "fluxq jobs: 3 in 1 batches (3 waiting, 0 done" in out
    assert server.password not in out + status.stderr
    # With FLUXQ_REDIS_URL set it says the commands use that one instead
    elsewhere = fluxq(env | {"FLUXQ_REDIS_URL": "redis://:secret@127.0.0.1:1/0"}, "redis", "status")
    assert "FLUXQ_REDIS_URL is set" in elsewhere.stderr
    assert "secret" not in elsewhere.stdout + elsewhere.stderr


def test_a_python_client_with_no_url_finds_the_same_embedded_redis(
    data_dir: Path, tmp_path: Path
) -> None:
    env = env_for(data_dir, tmp_path)
    # Given the embedded Redis started by a command
    assert fluxq(env, "batch", "list").returncode == 0
    server = embedded(data_dir)
    # When a Python producer with no Redis URL enqueues a job
    settings = load_settings(redis_url=None, data_dir=data_dir, bfl_api_key=KEY)
    with Client(settings) as client:
        assert client.settings.redis_url == server.url
        job = client.enqueue("flux-dev", {"prompt": "a heron"}, job_id="from-python", batch="py")
        assert job.id == "from-python"
    # Then a command in another process sees it there
    status = fluxq(env, "batch", "status", "py", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["total"] == 1
    assert server_pids_in(data_dir) == [server.pid]
