"""Run one side: the naive loop or a ``fluxq worker`` tree, on the shared simulator and Redis.

Each side gets its own API key (its own simulator account and cap), an empty Redis, its own
output directory and the same N prompts; it is timed from the first job handed over to the last.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.plan import Scenario, Side
from bench.procs import TreeSampler, bench_env, log_tail, read_line, spawn, stop
from fluxq.client import Client
from fluxq.config.catalog import CATALOG
from fluxq.config.celery import DEFAULT_SAVE_THREADS, DEFAULT_THREADS
from fluxq.config.settings import Settings, load_settings
from fluxq.workers.celery_app import make_celery
from fluxq.workers.process.children import start_child, stop_child
from fluxq.workers.process.supervisor import default_specs
from fluxq.workers.state import keys
from fluxq.workers.state.jobs import Job, State

NAIVE_POLL_S = 0.5
"""BFL's documented polling interval, scaled by --time-scale like the simulator's latencies."""

NAIVE_RETRY_S = 1.0
"""The naive loop's wait after a 429, scaled the same way."""

START_TIMEOUT_S = 90.0
"""How long a side may take to start (imports, Celery start-up) before it counts as failed."""

WAIT_STEP_S = 0.5
"""How often the fluxq side's batch counters are read."""

WORKER_THREADS = DEFAULT_THREADS
SAVE_THREADS = DEFAULT_SAVE_THREADS
"""``fluxq worker``'s defaults, passed explicitly: they fix how many processes to wait for."""


@dataclass(frozen=True)
class Context:
    """What every side of one scenario shares."""

    scenario: Scenario
    n: int
    cap: int
    time_scale: float
    sim_env: Mapping[str, str]
    redis_url: str
    work_dir: Path
    deadline_s: float
    account_cap: int | None = None
    """FLUXQ_ACTIVE_CAP when the scenario's endpoint has a smaller cap of its own (``cap``)."""

    @property
    def api_url(self) -> str:
        return self.sim_env["FLUXQ_BFL_BASE_URL"]


@dataclass(frozen=True)
class JobRecord:
    """One job as its client saw it: the BFL task it became and when its image was on disk."""

    index: int
    task_id: str | None
    saved_at: float | None
    error: str | None = None


@dataclass
class SideRun:
    """What one side did; ``error`` says why it stopped early, if it did."""

    side: Side
    key: str
    jobs: list[JobRecord] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0
    cpu_s: float = 0.0
    startup_cpu_s: float = 0.0
    peak_rss_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run_side(side: Side, ctx: Context) -> SideRun:
    """Run ``side`` to the end or its deadline; a failure is recorded, never raised."""
    run = SideRun(side=side, key=side.key(ctx.scenario))
    redis_client = redis.Redis.from_url(ctx.redis_url)
    try:
        redis_client.flushall()
    finally:
        redis_client.close()
    images = ctx.work_dir / side.name
    images.mkdir(parents=True, exist_ok=True)
    try:
        if side.kind == "naive":
            _run_naive(run, ctx)
        else:
            _run_fluxq(run, ctx)
    except Exception as exc:  # reported in the results: one side's failure ends no run
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(images, ignore_errors=True)  # thousands of images: none is looked at
    return run


def _run_naive(run: SideRun, ctx: Context) -> None:
    log = ctx.work_dir / f"{run.side.name}.log"
    out = ctx.work_dir / f"{run.side.name}.json"
    argv = [
        sys.executable, "-m", "bench.naive",
        "--base-url", ctx.api_url, "--endpoint", ctx.scenario.endpoint, "--key", run.key,
        "--scenario", ctx.scenario.name, "--n", str(ctx.n), "--cap", str(ctx.cap),
        "--poll-s", repr(NAIVE_POLL_S * ctx.time_scale),
        "--retry-s", repr(NAIVE_RETRY_S * ctx.time_scale),
        "--image-dir", str(ctx.work_dir / run.side.name), "--out", str(out),
    ]  # fmt: skip
    process = spawn(argv, env=bench_env(), log=log)
    sampler: TreeSampler | None = None
    try:
        sampler = TreeSampler(process.pid)
        read_line(process, START_TIMEOUT_S, log)  # "ready": imported, client built
        run.startup_cpu_s = sampler.sample()
        run.started_at = time.time()
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
        read_line(process, ctx.deadline_s, log)  # "done": results written, still alive
        run.finished_at = time.time()
        run.cpu_s = sampler.sample() - run.startup_cpu_s
    finally:
        if sampler is not None:
            sampler.close()
            run.peak_rss_bytes = sampler.peak_rss_bytes
        stop(process)
    jobs = json.loads(out.read_text())["jobs"]
    run.jobs = [
        JobRecord(job["index"], job.get("task_id"), job.get("downloaded_at"), job.get("error"))
        for job in jobs
    ]
    run.extra["retries_429"] = sum(job.get("retries_429", 0) for job in jobs)


def worker_env(run: SideRun, ctx: Context) -> dict[str, str]:
    """The worker's environment: ours without any FLUXQ_* or key, then the bench's, then the
    side's own (which wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXQ_") and k != "BFL_API_KEY"}
    env.update(ctx.sim_env)
    env.update(
        {
            "BFL_API_KEY": run.key,
            "FLUXQ_REDIS_URL": ctx.redis_url,
            "FLUXQ_OUTPUT_DIR": str(ctx.work_dir / run.side.name),
            "FLUXQ_ACTIVE_CAP": str(ctx.account_cap or ctx.cap),
            "PYTHONUNBUFFERED": "1",
        }
    )
    typical_s = CATALOG[ctx.scenario.endpoint].typical_s
    if ctx.time_scale != 1:
        # The catalog's prior generation time, and the 0.5 s loop the poll budget is a share
        # of, on the simulator's scaled clock, as they would stand against BFL's real one
        env["FLUXQ_POLL_REFERENCE_S"] = repr(NAIVE_POLL_S * ctx.time_scale)
        if typical_s is not None:
            env["FLUXQ_POLL_PRIOR_MEDIAN_S"] = repr(typical_s * ctx.time_scale)
    env.update(run.side.env)
    return env


def producer_settings(env: Mapping[str, str]) -> Settings:
    """The Settings the workers load from ``env``, for the producer (same Redis, key, cap)."""
    values: dict[str, Any] = {
        name.removeprefix("FLUXQ_").lower(): value
        for name, value in env.items()
        if name.startswith("FLUXQ_")
    }
    values["bfl_api_key"] = env["BFL_API_KEY"]
    return load_settings(_env_file=None, **values)


def _run_fluxq(run: SideRun, ctx: Context) -> None:
    env = worker_env(run, ctx)
    api: subprocess.Popen[bytes] | None = None
    api_sampler: TreeSampler | None = None
    if run.side.webhook:
        port = free_port()
        env["FLUXQ_BFL_WEBHOOK_BASE_URL"] = f"http://127.0.0.1:{port}"
        env["FLUXQ_BFL_WEBHOOK_SECRET"] = secrets.token_urlsafe(32)
        api = _start_api(run, ctx, env, port)
        api_sampler = TreeSampler(api.pid)
    settings = producer_settings(env)
    log = ctx.work_dir / f"{run.side.name}-worker.log"
    argv = [
        sys.executable, "-P", "-m", "fluxq", "worker", "--loglevel", "warning",
        "--threads", str(WORKER_THREADS), "--save-threads", str(SAVE_THREADS),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = start_child(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    sampler: TreeSampler | None = None
    samplers = [api_sampler] if api_sampler is not None else []
    try:
        sampler = TreeSampler(process.pid)
        samplers.append(sampler)
        with Client(settings) as client:
            wait_consuming(settings, process, log)
            run.startup_cpu_s = sum(each.sample() for each in samplers)
            api_start_s = api_sampler.sample() if api_sampler is not None else 0.0
            redis_start_s = redis_cpu_s(client.runtime.redis)
            client.runtime.redis.config_resetstat()
            ids = _enqueue_and_wait(run, ctx, client, process, log)
            run.cpu_s = sum(each.sample() for each in samplers) - run.startup_cpu_s
            api_s = api_sampler.sample() - api_start_s if api_sampler is not None else 0.0
            run.extra["cpu_api_s"] = api_s
            run.extra["cpu_workers_s"] = run.cpu_s - api_s
            run.extra["cpu_redis_s"] = redis_cpu_s(client.runtime.redis) - redis_start_s
            calls = redis_command_calls(client.runtime.redis)
            run.extra["redis_commands"] = sum(calls.values())
            run.extra["redis_command_calls"] = calls
            _collect(run, client, ids)
    finally:
        for each in samplers:
            each.close()
        # The API's peak is added to the workers': an upper bound of the two together.
        run.peak_rss_bytes = sum(each.peak_rss_bytes for each in samplers)
        stop_child(process, timeout_s=30)
        if api is not None:
            stop_child(api, timeout_s=30)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the webhook side's ``fluxq api``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_api(
    run: SideRun, ctx: Context, env: dict[str, str], port: int
) -> subprocess.Popen[bytes]:
    """``fluxq api`` on ``port``, up (``/healthz`` answers 200) before the workers start."""
    log = ctx.work_dir / f"{run.side.name}-api.log"
    argv = [sys.executable, "-P", "-m", "fluxq", "api", "--port", str(port)]
    with log.open("wb") as out:
        process = start_child(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fluxq api exited ({process.returncode}):\n{log_tail(log)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_child(process, timeout_s=10)
    raise RuntimeError(f"fluxq api not up after {START_TIMEOUT_S:.0f} s:\n{log_tail(log)}")


def redis_cpu_s(client: redis.Redis[str]) -> float:
    """The Redis server's own CPU seconds so far (user + system, from INFO): the bench's Redis
    serves one side at a time, so a difference is that side's."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def redis_command_calls(client: redis.Redis[str]) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (fluxq's and Celery's broker work)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def wait_consuming(settings: Settings, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until every worker process of the tree answers a Celery ping (so it consumes)."""
    expected = len(default_specs(threads=WORKER_THREADS, save_threads=SAVE_THREADS))
    app = make_celery(settings)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"fluxq worker exited ({process.returncode}):\n{log_tail(log)}")
            replies = app.control.ping(timeout=0.5) or []
            mine = [node for reply in replies for node in reply if f"-{process.pid}@" in node]
            if len(mine) >= expected:
                return
        raise RuntimeError(f"fluxq worker not consuming after {START_TIMEOUT_S:.0f} s")
    finally:
        app.close()


def _enqueue_and_wait(
    run: SideRun, ctx: Context, client: Client, process: subprocess.Popen[bytes], log: Path
) -> list[str]:
    """Enqueue the N jobs in order, then wait until all have ended; returns their ids."""
    batch = run.key
    run.started_at = time.time()
    ids = [
        client.enqueue(
            ctx.scenario.endpoint, ctx.scenario.request(i), batch=batch, name=f"job-{i:05d}"
        ).id
        for i in range(ctx.n)
    ]
    run.extra["enqueue_s"] = time.time() - run.started_at
    deadline = time.monotonic() + ctx.deadline_s
    while True:
        counts = client.runtime.store.batch_counts(batch)
        finished = sum(counts[state.value] for state in State if state.terminal)
        if finished >= ctx.n:
            break
        if process.poll() is not None:
            raise RuntimeError(f"fluxq worker exited ({process.returncode}):\n{log_tail(log)}")
        if time.monotonic() > deadline:
            run.error = f"deadline: {finished}/{ctx.n} jobs ended in {ctx.deadline_s:.0f} s"
            break
        time.sleep(WAIT_STEP_S)
    run.finished_at = time.time()
    return ids


def _record(index: int, job: Job | None) -> JobRecord:
    if job is None:
        return JobRecord(index, None, None, "job record missing")
    error = None if job.state is State.DONE else f"{job.state.value}: {job.reason or ''}"
    return JobRecord(index, job.bfl_id, job.times.get(State.DONE.value), error)


def _collect(run: SideRun, client: Client, ids: list[str]) -> None:
    """Each job's record (its BFL id and saved time), and fluxq's counters."""
    run.jobs = [_record(i, client.runtime.store.get(job_id)) for i, job_id in enumerate(ids)]
    redis_client = client.runtime.redis
    run.extra["counters"] = client.runtime.limiter.counters()
    run.extra["cap_state"] = redis_client.hgetall(keys.cap_state(client.runtime.label))
