"""``fluxq batch`` as a user runs it overnight: real `fluxq worker` processes, a real Redis, the
simulator over loopback, and the CLI as separate processes (one killed mid-way, run again)."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fluxq.tasks.batches import BatchStatus, batch_status
from fluxq.workers.state import keys
from tests.support.cluster import Cluster
from tests.support.env import KEY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

ADDED = re.compile(r"added ([\d,]+), already there ([\d,]+)")


def fluxq_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "fluxq", *args]


def cli_env(cluster: Cluster, tmp_path: Path) -> dict[str, str]:
    """The workers' environment; the CLI's temporary spool goes under tmp_path (a killed submit
    leaves it behind)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(exist_ok=True)
    return cluster.env | {"COLUMNS": "200", "TMPDIR": str(spool_dir)}


def fluxq(
    cluster: Cluster, tmp_path: Path, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fluxq_argv(*args), cwd=tmp_path, env=cli_env(cluster, tmp_path), capture_output=True,
        text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def line(i: int) -> dict[str, Any]:
    return {"id": f"p{i:05d}", "prompt": f"a lighthouse at dusk, take {i}", "seed": i,
            "width": 256, "height": 256}  # fmt: skip


def write_jsonl(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for i in range(count):
            file.write(json.dumps(line(i)) + "\n")
    return path


def added(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    found = ADDED.search(result.stdout)
    assert found is not None, shown(result)
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def status_of(cluster: Cluster, name: str) -> BatchStatus:
    status = batch_status(cluster.rt, name)
    assert status is not None
    return status


def wait_for(
    cluster: Cluster, name: str, done: Callable[[BatchStatus], bool], *, timeout_s: float
) -> BatchStatus:
    deadline = time.monotonic() + timeout_s
    status = status_of(cluster, name)
    while not done(status):
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text()[-2000:] for log in cluster.logs)
            raise AssertionError(f"batch {name} stuck: {status}\n{tail}")
        time.sleep(0.2)
        status = status_of(cluster, name)
    return status


def test_a_thousand_lines_run_to_the_end_and_are_reported(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    cluster.start_worker()
    path = write_jsonl(tmp_path / "big.jsonl", 1000)
    submitted = fluxq(cluster, tmp_path, "batch", "submit", str(path), "--endpoint", "flux-dev",
                      "--name", "big")  # fmt: skip
    assert submitted.returncode == 0, shown(submitted)
    assert added(submitted) == (1000, 0)
    watched = fluxq(cluster, tmp_path, "batch", "status", "big", "--watch", "--interval", "0.5",
                    timeout_s=120)  # fmt: skip
    assert watched.returncode == 0, shown(watched)
    assert "1,000 done, 0 failed, 0 cancelled, 0 waiting of 1,000" in watched.stdout
    manifest = Path(cluster.env["FLUXQ_OUTPUT_DIR"]) / "big" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) == 1000
    report = fluxq(cluster, tmp_path, "batch", "report", "big", "--csv")
    assert report.returncode == 0, shown(report)
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert len(rows) == 1000
    assert {row["state"] for row in rows} == {"done"}
    assert len({row["line_id"] for row in rows}) == 1000
    assert all(Path(row["file"]).is_file() for row in rows[:20])
    stats = cluster.sim.stats(KEY)
    assert (stats["submits"], stats["duplicate_submits"]) == (1000, 0)


def test_a_csv_batch_goes_to_its_own_directory(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=2)
    path = tmp_path / "rows.csv"
    rows = [f"c{i},a fox in the snow {i},{i}" for i in range(50)]
    path.write_text("id,prompt,seed\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "foxes"
    submitted = fluxq(cluster, tmp_path, "batch", "submit", str(path), "--endpoint", "flux-dev",
                      "--name", "foxes", "--out", str(out), "--param", "width=256",
                      "--param", "height=256")  # fmt: skip
    assert submitted.returncode == 0, shown(submitted)
    assert added(submitted) == (50, 0)
    watched = fluxq(cluster, tmp_path, "batch", "status", "foxes", "--watch", "--json",
                    "--interval", "0.3", timeout_s=90)  # fmt: skip
    assert watched.returncode == 0, shown(watched)
    final = json.loads(watched.stdout.splitlines()[-1])
    assert (final["counts"]["done"], final["finished"]) == (50, True)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 50
    assert sorted(p.name for p in out.glob("*.jpeg"))[:2] == ["c0.jpeg", "c1.jpeg"]


def test_a_budget_pauses_the_batch_and_resume_finishes_it(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    cluster.start_worker(threads=4, save_threads=2)
    credits = 4.0  # flux-pro-1.1, per image
    budget = 10 * credits
    path = write_jsonl(tmp_path / "paid.jsonl", 30)
    submitted = fluxq(cluster, tmp_path, "batch", "submit", str(path), "--endpoint",
                      "flux-pro-1.1", "--name", "paid", "--budget", f"{budget:g}")  # fmt: skip
    assert submitted.returncode == 0, shown(submitted)
    # Ten run, then the batch waits: the eleventh would pass the budget
    paused = wait_for(cluster, "paid", lambda s: s.counts["done"] >= 10, timeout_s=60)
    time.sleep(1.0)  # nothing more starts
    paused = status_of(cluster, "paid")
    assert paused.paused == "budget", paused
    assert (paused.counts["done"], paused.counts["queued"], paused.waiting) == (10, 20, 20)
    assert paused.spent <= budget
    assert paused.spent == pytest.approx(budget)
    shown_status = fluxq(cluster, tmp_path, "batch", "status", "paid")
    assert "paused: budget — `fluxq batch resume paid --budget MORE`" in shown_status.stdout
    # More budget: it runs to the end within it
    resumed = fluxq(cluster, tmp_path, "batch", "resume", "paid", "--budget", f"{20 * credits:g}")
    assert resumed.returncode == 0, shown(resumed)
    assert "of budget 120" in resumed.stdout
    watched = fluxq(cluster, tmp_path, "batch", "status", "paid", "--watch", "--interval", "0.3",
                    timeout_s=90)  # fmt: skip
    assert watched.returncode == 0, shown(watched)
    final = status_of(cluster, "paid")
    assert final.counts["done"] == 30
    assert final.budget == 3 * budget
    assert final.spent <= final.budget
    assert final.paused is None
    assert cluster.sim.stats(KEY)["submits"] == 30


def test_a_submit_killed_mid_way_and_run_again_adds_each_line_once(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    total = 20_000
    path = write_jsonl(tmp_path / "huge.jsonl", total)
    argv = fluxq_argv("batch", "submit", str(path), "--endpoint", "flux-dev", "--name", "huge")
    # When the submit is SIGKILLed once Redis holds some of its lines
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=cli_env(cluster, tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    batch_key = keys.batch("huge")
    deadline = time.monotonic() + 90
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if int(cluster.rt.redis.hget(batch_key, "total") or 0) > 0:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    partial = int(cluster.rt.redis.hget(batch_key, "total") or 0)
    assert 0 < partial < total
    # Then the same command again adds exactly what is missing
    again = fluxq(cluster, tmp_path, *argv[4:], timeout_s=120)
    assert again.returncode == 0, shown(again)
    assert added(again) == (total - partial, partial)
    status = status_of(cluster, "huge")
    assert status.total == total
    assert cluster.rt.redis.hlen(keys.names("huge")) == total
    lane = cluster.rt.redis.llen(keys.lane(cluster.rt.label, keys.DEFAULT_GROUP, "huge"))
    records = sum(1 for _ in cluster.rt.redis.scan_iter(keys.job("huge.*"), count=1000))
    assert lane + records == total
    # And what runs is submitted once each
    cluster.start_worker()
    wait_for(cluster, "huge", lambda s: s.counts["done"] >= 200, timeout_s=60)
    stats = cluster.sim.stats(KEY)
    assert stats["duplicate_submits"] == 0
    cancelled = fluxq(cluster, tmp_path, "batch", "cancel", "huge")
    assert cancelled.returncode == 0, shown(cancelled)
    lines = int(cancelled.stdout.split("cancelled ", 1)[1].split(" ", 1)[0].replace(",", ""))
    final = wait_for(cluster, "huge", lambda s: s.waiting == 0, timeout_s=30)
    assert final.counts["cancelled"] >= lines
    assert final.counts["done"] + final.counts["cancelled"] + final.counts["failed"] == total
    assert cluster.sim.stats(KEY)["duplicate_submits"] == 0
