"""``python -m bench brownout``: fluxq beside the naive loop through a SIGKILL and a minute of 503s.

One redis-server and one simulator (each its own process, on loopback) serve the run. The sides
run one after another (a 2-core machine would make them share CPU), each on its own API key (its
own simulator account and cap) and an emptied Redis, on the same N prompts, and each meets the
same faults at the same times from its first job (``plan.Brownout``, times ``--time-scale``):

1. steady work until ``kill_at_s``;
2. POSTs answered only after ``slow_post_s`` until a full cap of them is in flight (or that long
   has passed); then the side's whole process tree is SIGKILLed (children first, by pid), POSTs
   are fast again and the side starts afresh: fluxq, a new ``fluxq worker`` on the same Redis;
   the naive loop, the same command skipping the images already on disk (what re-running the
   script gives). The simulator still creates the killed POSTs' tasks: paid, never seen;
3. 503 to every POST from ``outage_at_s`` for ``outage_s``;
4. then until every job has ended, or the deadline.

The simulator is the judge: images per minute (per ``bucket_s``) count each task's first
download in its timeline; paid twice is its duplicate-submit counter. ``fluxq worker`` runs with
default settings and ``--threads`` twice the cap, so a full cap of POSTs can be in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil
import redis

from bench.plan import BROWNOUT, ENDPOINT, SCENARIOS, Brownout, Scenario, Side
from bench.procs import bench_env, read_line, spawn, stop
from bench.report import brownout_text
from bench.sides import (
    NAIVE_POLL_S,
    NAIVE_RETRY_S,
    START_TIMEOUT_S,
    Context,
    SideRun,
    producer_settings,
    wait_consuming,
    worker_env,
)
from bench.throughput import _now, _stop_on_sigterm, machine, say, start_simulator
from fluxq.client import Client
from fluxq.simulator.accounts import account_label
from fluxq.workers.process.children import start_child, stop_child
from fluxq.workers.process.embedded_redis import EmbeddedRedis
from fluxq.workers.state.jobs import State

SIDES = ("naive", "fluxq")
"""The two sides, in the order they run."""

STEP_S = 0.2
"""How often the driver looks at the clock, the side and the simulator."""

DEADLINE_AFTER_OUTAGE_S = 300.0
"""Default deadline of a side: the outage's end plus this (times --time-scale, at least 60 s)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``brownout`` command's options."""
    parser.add_argument("--scenario", default="l5", help=f"One of {', '.join(SCENARIOS)}.")
    parser.add_argument("--n", type=int, default=800, help="Jobs per side.")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="Multiplies latencies, the naive waits and the fault timeline: 0.2 runs 5x faster "
        "(fluxq's own timeouts, leases and backoffs do not scale).",
    )
    parser.add_argument("--seed", type=int, default=1, help="Latency seed: same jobs, same times.")
    parser.add_argument("--cap", type=int, default=24, help="The account's active-task cap.")
    parser.add_argument("--json", type=Path, help="Write every figure here.")
    parser.add_argument(
        "--deadline-s",
        type=float,
        help=f"Per side; default: the outage's end + {DEADLINE_AFTER_OUTAGE_S:g} s (scaled).",
    )


# ---------------------------------------------------------------------------------------------
# The two sides, behind one small interface


class SideDriver(Protocol):
    """What the driver needs of a side."""

    def start(self) -> float: ...
    def kill(self) -> int: ...
    def restart(self) -> None: ...
    def finished(self) -> bool: ...
    def close(self) -> None: ...
    def summary(self) -> dict[str, Any]: ...


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid``'s descendants, then ``pid``, by their pids; returns how many.

    Children first: a supervisor killed first would have its children SIGTERMed (a graceful
    stop, not a crash)."""
    try:
        victims = [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return 0
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGKILL)
    return len(victims)


def _line_ready(process: subprocess.Popen[bytes]) -> bool:
    """True when the child has written something on stdout (without blocking)."""
    assert process.stdout is not None
    return bool(select.select([process.stdout.fileno()], [], [], 0)[0])


class NaiveSide:
    """``bench.naive`` in its own process; killed, it is run again with ``--skip-existing``."""

    def __init__(self, run: SideRun, ctx: Context) -> None:
        self.run, self.ctx = run, ctx
        self.image_dir = ctx.work_dir / run.side.name
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.done = False

    def _out(self) -> Path:
        return self.ctx.work_dir / f"{self.run.side.name}-{self.starts}.json"

    def _log(self) -> Path:
        return self.ctx.work_dir / f"{self.run.side.name}.log"

    def start(self) -> float:
        """Start the loop; returns when it was told to go."""
        self.starts += 1
        argv = [
            sys.executable, "-m", "bench.naive",
            "--base-url", self.ctx.api_url, "--endpoint", ENDPOINT, "--key", self.run.key,
            "--scenario", self.ctx.scenario.name, "--n", str(self.ctx.n),
            "--cap", str(self.ctx.cap),
            "--poll-s", repr(NAIVE_POLL_S * self.ctx.time_scale),
            "--retry-s", repr(NAIVE_RETRY_S * self.ctx.time_scale),
            "--image-dir", str(self.image_dir), "--out", str(self._out()),
            *(["--skip-existing"] if self.starts > 1 else []),
        ]  # fmt: skip
        self.process = spawn(argv, env=bench_env(), log=self._log())
        read_line(self.process, START_TIMEOUT_S, self._log())  # "ready"
        assert self.process.stdin is not None
        began = time.time()
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()
        return began

    def kill(self) -> int:
        assert self.process is not None
        killed = kill_tree(self.process.pid)
        self.process.wait(timeout=10)
        stop(self.process)  # closes its pipes
        return killed

    def restart(self) -> None:
        self.start()

    def finished(self) -> bool:
        if not self.done and self.process is not None and _line_ready(self.process):
            read_line(self.process, 1.0, self._log())  # "done": results written
            self.done = True
        return self.done

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)

    def summary(self) -> dict[str, Any]:
        out = self._out()
        jobs = json.loads(out.read_text())["jobs"] if self.done and out.exists() else []
        errors = sorted({str(job["error"])[:80] for job in jobs if job.get("error")})
        return {
            "starts": self.starts,
            "last_run_jobs": len(jobs),
            "last_run_errors": sum(1 for job in jobs if job.get("error")),
            "error_kinds": errors[:3],
            "images_on_disk": sum(1 for _ in self.image_dir.glob("*.jpg")),
        }


class FluxqSide:
    """A ``fluxq worker`` tree fed through ``fluxq.Client``; killed, a new tree takes over."""

    def __init__(self, run: SideRun, ctx: Context) -> None:
        self.run, self.ctx = run, ctx
        self.env = worker_env(run, ctx)
        self.settings = producer_settings(self.env)
        self.client = Client(self.settings)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.batch = run.key

    def _start_worker(self) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.ctx.work_dir / f"{self.run.side.name}-worker-{len(self.processes)}.log"
        argv = [
            sys.executable, "-P", "-m", "fluxq", "worker", "--loglevel", "warning",
            "--threads", str(2 * self.ctx.cap), "--save-threads", "0",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = start_child(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process, log

    def start(self) -> float:
        """Start the tree, then enqueue every job; returns when the first was enqueued."""
        process, log = self._start_worker()
        wait_consuming(self.settings, process, log)
        began = time.time()
        for i in range(self.ctx.n):
            self.client.enqueue(
                ENDPOINT, {"prompt": self.ctx.scenario.prompt(i)}, batch=self.batch,
                name=f"job-{i:05d}",
            )  # fmt: skip
        return began

    def kill(self) -> int:
        process = self.processes[-1]
        killed = kill_tree(process.pid)
        process.wait(timeout=10)
        return killed

    def restart(self) -> None:
        self._start_worker()

    def counts(self) -> dict[str, int]:
        return self.client.runtime.store.batch_counts(self.batch)

    def finished(self) -> bool:
        counts = self.counts()
        return sum(counts[state.value] for state in State if state.terminal) >= self.ctx.n

    def close(self) -> None:
        try:
            for process in self.processes:
                stop_child(process, timeout_s=30)
        finally:
            self.client.close()

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "done": counts[State.DONE.value],
            "failed": counts[State.FAILED.value],
            "uncertain": counts["uncertain"],
            "not_ended": self.ctx.n - sum(counts[state.value] for state in State if state.terminal),
            "counters": self.client.runtime.limiter.counters(),
        }


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class Marks:
    """When each fault happened (epoch seconds) and what it hit."""

    started_at: float = 0.0
    slow_at: float | None = None
    killed_at: float | None = None
    restarted_at: float | None = None
    slow_posts_at_kill: int = 0
    outage_from: float | None = None
    outage_to: float | None = None
    finished_at: float = 0.0
    deadline_hit: bool = False
    notes: list[str] = field(default_factory=list)


def _slow_posts(http: httpx.Client) -> int:
    return int(http.get("/sim/stats").json()["counters"].get("fault_slow", 0))


def _configure(http: httpx.Client, **knobs: Any) -> None:
    http.post("/sim/config", json=knobs).raise_for_status()


def drive(
    side: SideDriver, http: httpx.Client, plan: Brownout, cap: int, deadline_s: float
) -> Marks:
    """Run one side through the timeline; every fault is cleared again whatever happens."""
    marks = Marks(started_at=side.start())
    begin = marks.started_at
    deadline = begin + deadline_s

    def wait_until(when: float) -> bool:
        """Sleep until ``when``; False if the side finished or the deadline came first."""
        while time.time() < min(when, deadline):
            if side.finished():
                return False
            time.sleep(STEP_S)
        return time.time() < deadline

    try:
        if wait_until(begin + plan.kill_at_s):
            marks.slow_at = time.time()
            before = _slow_posts(http)
            _configure(http, submit_slow_rate=1.0, slow_delay_s=plan.slow_post_s)
            fill_by = marks.slow_at + plan.slow_post_s
            while time.time() < fill_by and _slow_posts(http) - before < cap:
                time.sleep(0.05)
            marks.slow_posts_at_kill = _slow_posts(http) - before
            side.kill()
            marks.killed_at = time.time()
            _configure(http, submit_slow_rate=0.0)
            side.restart()
            marks.restarted_at = time.time()
        if wait_until(begin + plan.outage_at_s):
            marks.outage_from = time.time()
            _configure(http, submit_503_rate=1.0)
            wait_until(begin + plan.outage_at_s + plan.outage_s)
            _configure(http, submit_503_rate=0.0)
            marks.outage_to = time.time()
        wait_until(deadline)
        marks.deadline_hit = not side.finished()
    finally:
        _configure(http, submit_slow_rate=0.0, submit_503_rate=0.0)
        marks.finished_at = time.time()
    return marks


# ---------------------------------------------------------------------------------------------
# The figures


def _per_min(times: list[float], start: float | None, end: float | None) -> float | None:
    if start is None or end is None or end <= start:
        return None
    return 60.0 * sum(1 for t in times if start <= t < end) / (end - start)


def side_figures(
    marks: Marks,
    tasks: list[dict[str, Any]],
    account: dict[str, Any],
    *,
    n: int,
    plan: Brownout,
) -> dict[str, Any]:
    """Images per minute over time and per phase, and what each side paid, from the simulator."""
    fetched = sorted(t["first_download_at"] for t in tasks if t["first_download_at"] is not None)
    end = max(marks.finished_at, fetched[-1] if fetched else marks.finished_at)
    buckets = max(1, int((end - marks.started_at) // plan.bucket_s) + 1)
    per_bucket = [0] * buckets
    for t in fetched:
        per_bucket[min(buckets - 1, int((t - marks.started_at) // plan.bucket_s))] += 1
    new_after_kill = [
        t["first_download_at"]
        for t in tasks
        if marks.killed_at is not None
        and t["created_at"] > marks.killed_at
        and t["first_download_at"] is not None
    ]
    outage_end = marks.outage_to
    return {
        "images": len({t["prompt"] for t in tasks if t["first_download_at"] is not None}),
        "n": n,
        "images_per_min_series": [round(60.0 * c / plan.bucket_s, 1) for c in per_bucket],
        "images_per_min_before_kill": _per_min(fetched, marks.started_at, marks.slow_at),
        "images_per_min_kill_to_outage": _per_min(fetched, marks.killed_at, marks.outage_from),
        "images_per_min_during_outage": _per_min(fetched, marks.outage_from, outage_end),
        "images_per_min_after_outage": _per_min(
            fetched, outage_end, None if outage_end is None else outage_end + plan.outage_s
        ),
        "first_new_image_after_kill_s": round(min(new_after_kill) - marks.killed_at, 1)
        if new_after_kill and marks.killed_at is not None
        else None,
        "slow_posts_at_kill": marks.slow_posts_at_kill,
        "paid_twice": account.get("duplicate_submits", 0),
        "tasks_paid_never_fetched": sum(1 for t in tasks if t["first_download_at"] is None),
        "submits": account.get("submits", 0),
        "rate_limited_429": account.get("rate_limited_429", 0),
        "max_active": account.get("max_active", 0),
        "deadline_hit": marks.deadline_hit,
        "wall_s": round(marks.finished_at - marks.started_at, 1),
    }


def run_brownout(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """The whole benchmark: start Redis and the simulator, run both sides, print the figure."""
    scenario: Scenario = SCENARIOS[args.scenario]
    plan = BROWNOUT.scaled(args.time_scale)
    deadline_s = args.deadline_s or max(
        60.0, plan.outage_at_s + plan.outage_s + DEADLINE_AFTER_OUTAGE_S * args.time_scale
    )
    report: dict[str, Any] = {
        "command": [sys.executable, "-m", "bench", *argv],
        "machine": machine(),
        "started_at": _now(),
        "scenario": scenario.name,
        "latency_text": f"lognormal median {scenario.median_s:g} s, sigma {scenario.sigma:g}",
        "n": args.n,
        "time_scale": args.time_scale,
        "seed": args.seed,
        "cap": args.cap,
        "plan": plan.__dict__,
        "deadline_s": deadline_s,
        "sides": {},
    }
    _stop_on_sigterm()
    with ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxq-brownout-")))
        redis_server = stack.enter_context(EmbeddedRedis())
        sim_config = {
            "active_cap": args.cap,
            "time_scale": args.time_scale,
            "latency_seed": args.seed,
            "rng_seed": args.seed,
            "report_progress": False,
        }
        sim_env = start_simulator(stack, sim_config, work_dir / "simulator.log")
        api = sim_env["FLUXQ_BFL_BASE_URL"]
        http = stack.enter_context(httpx.Client(base_url=api, timeout=60, trust_env=False))
        latency = {e: d.model_dump() for e, d in scenario.latency_map().items()}
        _configure(http, latency=latency)
        ctx = Context(
            scenario, args.n, args.cap, args.time_scale, sim_env, redis_server.url, work_dir,
            deadline_s,
        )  # fmt: skip
        say(brownout_text(report, header_only=True))
        for name in SIDES:
            side_def = Side(name, "naive" if name == "naive" else "fluxq")
            run = SideRun(side=side_def, key=f"bench-brownout-{name}-{scenario.name}")
            flush = redis.Redis.from_url(redis_server.url)
            try:
                flush.flushall()
            finally:
                flush.close()
            side: SideDriver = NaiveSide(run, ctx) if name == "naive" else FluxqSide(run, ctx)
            say(f"  {name}: running {args.n} jobs (deadline {deadline_s:.0f} s)")
            error = None
            try:
                marks = drive(side, http, plan, args.cap, deadline_s)
                summary = side.summary()
            except Exception as exc:  # reported in the results: one side's failure ends no run
                marks, summary = Marks(started_at=time.time()), {}
                error = f"{type(exc).__name__}: {exc}"
            finally:
                side.close()
            label = account_label(run.key)
            tasks = http.get("/sim/timeline", params={"account": label}).json()["tasks"]
            account = http.get("/sim/stats", params={"account": label}).json()["accounts"]
            figures = side_figures(marks, tasks, account.get(label, {}), n=args.n, plan=plan)
            report["sides"][name] = {
                "figures": figures,
                "marks": marks.__dict__,
                "summary": summary,
                "error": error,
            }
            say(
                f"  {name}: {figures['images']}/{args.n} images, paid twice "
                f"{figures['paid_twice']}, {figures['wall_s']:.0f} s"
                + (f" — {error}" if error else "")
            )
    report["finished_at"] = _now()
    say("")
    say(brownout_text(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        say(f"wrote {args.json}")
    return report
