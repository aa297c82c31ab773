"""``fluxq run FILE``: a batch file end to end on one machine, in one command, resumable.

Real ``fluxq run`` processes (which start their own worker tree), FLUXQ_DATA_DIR in the test's
directory for the embedded Redis (stopped by its pid at the end), and the simulator: started by
``--simulate`` inside ``fluxq run``, or by the test where its counters must span two runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from fluxq.simulator import SimConfig, parse_latency, running_simulator
from fluxq.workers.process.embedded_redis import pid_alive
from fluxq.workers.state import keys
from tests.support.cluster import FAST_ENV
from tests.support.embedded import (
    clean_env,
    client_of,
    embedded,
    fluxq,
    fluxq_argv,
    stop_embedded,
    stop_process,
    wait_until,
)
from tests.support.env import KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    stop_embedded(path)


def env_for(data_dir: Path, tmp_path: Path) -> dict[str, str]:
    env = clean_env(FLUXQ_DATA_DIR=str(data_dir), FLUXQ_OUTPUT_DIR=str(tmp_path / "out"))
    return env | FAST_ENV


def write_prompts(path: Path, prompts: list[str]) -> Path:
    lines = [json.dumps({"prompt": prompt, "seed": i}) for i, prompt in enumerate(prompts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def done_count(data_dir: Path, batch: str) -> int:
    client = client_of(data_dir)
    try:
        return int(client.hget(keys.batch(batch), "done") or 0)
    finally:
        client.close()


LINES = 200


def processes_of(data_dir: Path) -> list[str]:
    """Command lines of live processes started for ``data_dir``, but its shared redis-server
    (which outlives every command by design, until `fluxq redis stop`)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.environ().get("FLUXQ_DATA_DIR") != str(data_dir):
                continue
            cmdline = " ".join(process.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "redis-server" not in cmdline:
            found.append(cmdline)
    return found


def test_run_with_simulate_runs_every_line_and_sums_up(data_dir: Path, tmp_path: Path) -> None:
    # Given a file of 200 prompts and no key, no Redis URL
    prompts = [f"a heron, study {i}" for i in range(LINES)]
    file = write_prompts(tmp_path / "herons.jsonl", prompts)
    # When it is run against the simulator
    run = fluxq(env_for(data_dir, tmp_path), "run", str(file), "--endpoint", "flux-dev",
                "--simulate", "--time-scale", "0.01", cwd=tmp_path, timeout_s=240)  # fmt: skip
    # Then every line is done, once, and the summary says so
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"batch herons: {LINES} done, 0 failed, 0 cancelled, 0 waiting of {LINES}" in run.stdout
    assert f"simulator saw: {LINES} submits, 0 duplicates" in run.stdout
    assert "credits: spent" in run.stdout
    assert "--simulate: the local BFL simulator" in run.stderr
    assert "using the embedded Redis" in run.stderr
    # And the images are there, each with its sidecar, all in the manifest
    batch_dir = tmp_path / "out" / "herons"
    assert f"images: {batch_dir}" in run.stdout
    sidecars = list(batch_dir.glob("*.json"))
    assert len(sidecars) == LINES
    for sidecar in sidecars:
        assert (batch_dir / json.loads(sidecar.read_text())["file"]).stat().st_size > 0
    manifest = (batch_dir / "manifest.jsonl").read_text().splitlines()
    assert len({json.loads(line)["job_id"] for line in manifest}) == LINES
    # And no worker (nor anything else the run started) is left running
    assert processes_of(data_dir) == []


def test_run_exits_1_and_names_the_reason_when_a_line_fails(data_dir: Path, tmp_path: Path) -> None:
    # Given a file whose second prompt is moderated and whose third fails at BFL
    prompts = ["a heron", "a heron [content-moderated]", "a fox [error]", "a fox"]
    file = write_prompts(tmp_path / "mixed.jsonl", prompts)
    run = fluxq(env_for(data_dir, tmp_path), "run", str(file), "--endpoint", "flux-dev",
                "--simulate", "--time-scale", "0.01", timeout_s=240)  # fmt: skip
    # Then it exits 1, and its summary counts each failure under BFL's reason
    assert run.returncode == 1, run.stdout + run.stderr
    assert "batch mixed: 2 done, 2 failed" in run.stdout
    assert "failures by reason:" in run.stdout
    assert re.search(r"^\s+1\s+Content Moderated", run.stdout, re.MULTILINE), run.stdout
    assert re.search(r"^\s+1\s+Error\s*$", run.stdout, re.MULTILINE), run.stdout
    assert processes_of(data_dir) == []


def test_run_without_a_key_or_simulate_names_both_in_one_line(
    data_dir: Path, tmp_path: Path
) -> None:
    file = write_prompts(tmp_path / "nokey.jsonl", ["a heron"])
    run = fluxq(env_for(data_dir, tmp_path), "run", str(file), "--endpoint", "flux-dev")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "BFL_API_KEY" in lines[0]
    assert "--simulate" in lines[0]
    assert "Traceback" not in run.stderr
    assert not data_dir.exists()  # refused before any Redis was started


def test_ctrl_c_stops_the_run_and_the_same_command_goes_on_paying_each_line_once(
    data_dir: Path, tmp_path: Path
) -> None:
    # A simulator of the test's own, so its counters span both runs: 30 lines of 1.5 s, 4 at once
    config = SimConfig(time_scale=1.0, latency=parse_latency("default=fixed:1.5"), rng_seed=5)
    with running_simulator(config) as sim:
        env = env_for(data_dir, tmp_path) | sim.env()
        env |= {"BFL_API_KEY": KEY, "FLUXQ_ACTIVE_CAP": "4"}
        file = write_prompts(tmp_path / "night.jsonl", [f"a lighthouse, {i}" for i in range(30)])
        argv = fluxq_argv("run", str(file), "--endpoint", "flux-dev", "--threads", "4")
        out = (tmp_path / "first.out").open("w+")
        # Its own session: the test presses Ctrl-C for the whole group, as a terminal does
        first = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            # Given a run under way, some lines done
            assert wait_until(
                lambda: data_dir.exists() and _safe_done(data_dir, "night") >= 4, timeout_s=90
            ), (tmp_path / "first.out").read_text()
            # When Ctrl-C is pressed
            os.killpg(first.pid, signal.SIGINT)
            code = first.wait(timeout=90)
        finally:
            stop_process(first)
            out.close()
        said = (tmp_path / "first.out").read_text()
        # Then it stopped its worker and said how to go on, leaving work undone
        assert code == 130, said
        assert "interrupted: stopping the worker" in said
        assert "`fluxq run` again" in said
        assert done_count(data_dir, "night") < 30
        assert pid_alive(embedded(data_dir).pid)  # the embedded Redis keeps the jobs
        # When the same command runs again
        again = fluxq(env, "run", str(file), "--endpoint", "flux-dev", "--threads", "4",
                      timeout_s=240)  # fmt: skip
        # Then it adds nothing new, finishes every line, and BFL was asked for each image once
        assert again.returncode == 0, again.stdout + again.stderr
        assert "added 0, already there 30" in again.stdout
        assert "batch night: 30 done, 0 failed" in again.stdout
        stats = sim.stats(KEY)
        assert stats["submits"] == 30
        assert stats["duplicate_submits"] == 0
        assert len(list((tmp_path / "out" / "night").glob("*.json"))) == 30


def _safe_done(data_dir: Path, batch: str) -> int:
    try:
        return done_count(data_dir, batch)
    except (AssertionError, redis.RedisError):  # no server yet
        return 0
