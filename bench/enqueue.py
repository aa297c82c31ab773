"""``python -m bench enqueue``: a large batch file into fluxq, end to end, and what it costs.

Writes an N-line JSONL file of flux-dev requests, starts a private redis-server (no worker: this
measures getting the file in, not running it), runs ``fluxq batch submit FILE`` as its own process
and reports, beside a naive baseline measured in the same run (one ``Client.enqueue`` per line,
the per-job API a user would loop over, timed on the first ``--naive-lines`` lines):

- jobs/s end to end (validation included) and the submit process's peak RSS;
- Redis memory per queued job (``used_memory`` before and after, divided by N);
- ``fluxq batch status`` on the N-job batch: the status read itself, and the whole command;
- one Prometheus scrape (``workers/metrics.py``) with the N jobs queued.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from prometheus_client import generate_latest

from bench.procs import TreeSampler, bench_env
from fluxq.client import Client
from fluxq.config.settings import load_settings
from fluxq.tasks.batches import batch_status
from fluxq.workers.metrics import registry_for
from fluxq.workers.process.embedded_redis import EmbeddedRedis

BATCH = "bench-enqueue"
ENDPOINT = "flux-dev"
STATUS_REPEATS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the batch file")
    parser.add_argument(
        "--naive-lines", type=int, default=20_000, help="lines the per-job baseline enqueues"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--deadline-s", type=float, default=1800.0, help="give up on the submit after this"
    )


def write_file(path: Path, lines: int) -> None:
    """N distinct flux-dev requests, about 120 bytes each, as a user's batch file would be."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            prompt = f"a watercolour of lighthouse number {i} at dusk, soft light, wide angle"
            out.write(json.dumps({"prompt": prompt, "seed": i, "width": 1024, "height": 768}))
            out.write("\n")


def _used_memory(client: redis.Redis[str]) -> int:
    return int(client.info("memory")["used_memory"])


def _submit(file: Path, env: dict[str, str], deadline_s: float) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "fluxq", "batch", "submit", str(file),
        "--endpoint", ENDPOINT, "--name", BATCH,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(process.pid, interval_s=0.2)
    try:
        out, err = process.communicate(timeout=deadline_s)
    finally:
        sampler.close()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"batch submit exited {process.returncode}: {err.decode()[-2000:]}")
    return {
        "wall_s": elapsed,
        "peak_rss_mb": sampler.peak_rss_bytes / 2**20,
        "output": out.decode()[-500:],
    }


def _status_cli(env: dict[str, str]) -> float:
    argv = [sys.executable, "-m", "fluxq", "batch", "status", BATCH, "--json"]
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def run_enqueue(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Run the benchmark; prints figures as it goes and returns them."""
    with tempfile.TemporaryDirectory(prefix="fluxq-bench-enqueue-") as tmp, EmbeddedRedis() as db:
        work = Path(tmp)
        file = work / "batch.jsonl"
        print(f"writing {args.lines:,} lines to {file}", flush=True)
        write_file(file, args.lines)
        env = bench_env(
            {
                "FLUXQ_REDIS_URL": db.url,
                "BFL_API_KEY": "bench-enqueue-key",
                "FLUXQ_OUTPUT_DIR": str(work / "out"),
            }
        )
        client: redis.Redis[str] = redis.Redis.from_url(db.url, decode_responses=True)
        before = _used_memory(client)
        print("running fluxq batch submit …", flush=True)
        submit = _submit(file, env, args.deadline_s)
        after = _used_memory(client)
        settings = load_settings(_env_file=None, redis_url=db.url, bfl_api_key="bench-enqueue-key")
        with Client(settings) as fluxq_client:
            rt = fluxq_client.runtime
            timings = []
            for _ in range(STATUS_REPEATS):
                started = time.perf_counter()
                status = batch_status(rt, BATCH)
                timings.append(time.perf_counter() - started)
            assert status is not None
            total = status.total
            registry = registry_for(settings, rt.redis)
            scrapes = []
            for _ in range(STATUS_REPEATS):
                started = time.perf_counter()
                generate_latest(registry)
                scrapes.append(time.perf_counter() - started)
            naive = _naive(fluxq_client, args.naive_lines)
        status_cli = min(_status_cli(env) for _ in range(3))
        report = {
            "command": ["python", "-m", "bench", *argv],
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "lines": args.lines,
            "jobs_in_batch": total,
            "submit_wall_s": submit["wall_s"],
            "jobs_per_s": args.lines / submit["wall_s"],
            "submit_peak_rss_mb": submit["peak_rss_mb"],
            "redis_bytes_per_job": (after - before) / max(1, total),
            "status_read_ms_median": sorted(timings)[len(timings) // 2] * 1000,
            "status_command_ms_best_of_3": status_cli * 1000,
            "metrics_scrape_ms_median": sorted(scrapes)[len(scrapes) // 2] * 1000,
            "naive_jobs_per_s": naive,
        }
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


def _naive(client: Client, lines: int) -> float:
    """Jobs/s of one ``Client.enqueue`` per line (the per-job API), on a batch of its own."""
    started = time.perf_counter()
    for i in range(lines):
        client.enqueue(
            ENDPOINT,
            {"prompt": f"naive {i}", "seed": i, "width": 1024, "height": 768},
            batch="bench-naive",
        )
    return lines / (time.perf_counter() - started)


def _print(report: dict[str, Any]) -> None:
    print(f"lines                          {report['lines']:,}")
    print(f"jobs in the batch              {report['jobs_in_batch']:,}")
    print(f"batch submit, end to end       {report['submit_wall_s']:.1f} s")
    print(f"  jobs/s (validation included) {report['jobs_per_s']:,.0f}   (target >= 20,000)")
    print(f"  peak RSS                     {report['submit_peak_rss_mb']:.0f} MB  (target < 150)")
    print(f"Redis per queued job           {report['redis_bytes_per_job']:.0f} B   (target <= 500)")
    print(f"batch status: the read         {report['status_read_ms_median']:.1f} ms (median)")
    print(
        f"batch status: the command      {report['status_command_ms_best_of_3']:.0f} ms "
        "(best of 3, process start included; target < 200)"
    )
    print(
        f"metrics scrape, 1M queued      {report['metrics_scrape_ms_median']:.1f} ms (median; "
        "target < 100)"
    )
    print(f"naive: Client.enqueue per line {report['naive_jobs_per_s']:,.0f} jobs/s")
