"""``python -m bench throughput``: fluxq against the naive loop and the oracle, on the same jobs.

One redis-server and one simulator (each its own process, on loopback) serve the whole run.
Sides run one after another, never together (a 2-core machine would make them share CPU), each
on its own API key (its own simulator account and cap) and an emptied Redis. The simulator gives
prompt i the same duration for every side (``SimConfig.latency_seed``), and the oracle schedules
exactly those durations, so the columns differ only by how each client used the cap.

``--time-scale`` compresses the simulator's latencies and, by the same factor, the naive loop's
0.5 s poll interval and 1 s 429 wait, so the naive loop keeps its shape at any speed. fluxq keeps
its own settings (it learns the latencies it sees); a ``--side`` can set any FLUXQ_* variable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench.metrics import one_line, oracle_metrics, side_metrics
from bench.oracle import Schedule, list_schedule
from bench.plan import SCENARIOS, Scenario, Side
from bench.procs import REPO_ROOT, bench_env, read_line, spawn, stop
from bench.report import findings, headline, table
from bench.sides import START_TIMEOUT_S, Context, SideRun, run_side
from fluxq.simulator.accounts import account_label
from fluxq.simulator.latency import seeded_duration_s
from fluxq.workers.process.embedded_redis import EmbeddedRedis

DEADLINE_FACTOR = 4.0
DEADLINE_MARGIN_S = 120.0
"""Default per-side deadline: this many oracle makespans plus this margin."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``throughput`` command's options."""
    parser.add_argument("--scenario", default="klein,l1,l5", help=f"Any of {', '.join(SCENARIOS)}.")
    parser.add_argument("--n", type=int, default=960, help="Jobs per side and scenario.")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="Multiplies latencies and the naive waits: 0.2 runs 5x faster.",
    )
    parser.add_argument("--seed", type=int, default=1, help="Latency seed: same jobs, same times.")
    parser.add_argument("--cap", type=int, default=24, help="The account's active-task cap.")
    parser.add_argument("--sides", default="naive,fluxq,fluxq-webhook", help="Sides, in order.")
    parser.add_argument(
        "--side",
        action="append",
        default=[],
        metavar="NAME:ENV=VAL;ENV=VAL",
        help="An extra fluxq side with its own environment (repeatable).",
    )
    parser.add_argument("--json", type=Path, help="Write every figure and per-job time here.")
    parser.add_argument(
        "--deadline-s",
        type=float,
        help=f"Per side; default {DEADLINE_FACTOR:g} x the oracle's makespan + "
        f"{DEADLINE_MARGIN_S:g} s.",
    )


def say(text: str) -> None:
    print(text, flush=True)


def machine() -> dict[str, Any]:
    """Where the figures were measured."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else "unknown"

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": git("status", "--porcelain", "--untracked-files=no") not in ("", "unknown"),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process started is stopped by its pid."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)


def start_simulator(stack: ExitStack, config: dict[str, Any], log: Path) -> dict[str, str]:
    """The simulator in its own process; returns the env that points fluxq at it."""
    argv = [sys.executable, "-m", "bench.simserver", "--config", json.dumps(config)]
    process = spawn(argv, env=bench_env(), log=log)
    stack.callback(stop, process)
    env: dict[str, str] = json.loads(read_line(process, START_TIMEOUT_S, log))
    return env


def _job_rows(run: SideRun, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per job: the client's times joined with its task's, for the JSON file."""
    by_id = {task["id"]: task for task in tasks}
    rows = []
    for job in run.jobs:
        task = by_id.get(job.task_id or "", {})
        rows.append(
            {
                "index": job.index,
                "task_id": job.task_id,
                "created_at": task.get("created_at"),
                "ready_at": task.get("ready_at"),
                "duration_s": task.get("duration_s"),
                "polls": task.get("polls"),
                "detected_at": task.get("first_terminal_poll_at"),
                "downloaded_at": task.get("first_download_at"),
                "saved_at": job.saved_at,
                "error": job.error,
            }
        )
    return rows


def run_scenario(
    scenario: Scenario,
    sides: list[Side],
    args: argparse.Namespace,
    *,
    http: httpx.Client,
    sim_env: dict[str, str],
    redis_url: str,
    work_dir: Path,
) -> dict[str, Any]:
    """Every side on one scenario, then the table."""
    n, cap = scenario.jobs(args.n), scenario.slots(args.cap)
    latency = scenario.latency_map()
    patch = {"latency": {endpoint: dist.model_dump() for endpoint, dist in latency.items()}}
    http.post("/sim/config", json=patch).raise_for_status()
    http.post("/sim/reset").raise_for_status()
    expected = {
        scenario.prompt(i): seeded_duration_s(
            args.seed, scenario.endpoint, scenario.prompt(i), latency
        )
        * args.time_scale
        for i in range(n)
    }
    oracle: Schedule = list_schedule(list(expected.values()), cap)
    deadline_s = args.deadline_s or DEADLINE_FACTOR * oracle.makespan_s + DEADLINE_MARGIN_S
    lognormal = scenario.latency()
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "latency_text": f"lognormal median {scenario.median_s:g} s, sigma {scenario.sigma:g}",
        "latency": {"p50_s": lognormal.p50_s, "p95_s": lognormal.p95_s, "sigma": scenario.sigma},
        "n": n,
        "time_scale": args.time_scale,
        "seed": args.seed,
        "cap": cap,
        "account_cap": args.cap,
        "endpoint": scenario.endpoint,
        "deadline_s": deadline_s,
        "started_at": _now(),
        "oracle": oracle_metrics(oracle),
        "sides": {},
    }
    say(headline(result))
    say(f"  oracle: makespan {oracle.makespan_s:.2f} s, utilisation {oracle.utilisation:.1%}")
    ctx = Context(
        scenario,
        n,
        cap,
        args.time_scale,
        sim_env,
        redis_url,
        work_dir,
        deadline_s,
        account_cap=args.cap,
    )
    for side in sides:
        say(f"  {side.name}: running {n} jobs (deadline {deadline_s:.0f} s)")
        run = run_side(side, ctx)
        label = account_label(run.key)
        tasks = http.get("/sim/timeline", params={"account": label}).json()["tasks"]
        stats = http.get("/sim/stats", params={"account": label}).json()["accounts"]
        account = stats.get(label, {})
        metrics = side_metrics(
            run, tasks, account, n=n, cap=cap, oracle=oracle, expected_s=expected
        )
        result["sides"][side.name] = {
            "kind": side.kind,
            "env": dict(side.env),
            "account": label,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "error": run.error,
            "metrics": metrics,
            "extra": run.extra,
            "jobs": _job_rows(run, tasks),
        }
        say(
            f"  {side.name}: {metrics['done']}/{n} done, makespan "
            f"{metrics['makespan_s']:.2f} s, utilisation {metrics['utilisation']:.1%}"
            + (f" — {one_line(run.error)}" if run.error else "")
        )
    result["finished_at"] = _now()
    say("")
    say(headline(result))
    say(table(result))
    say(findings(result))
    say("")
    return result


def run_throughput(args: argparse.Namespace, argv: list[str], sides: list[Side]) -> dict[str, Any]:
    """The whole benchmark: start Redis and the simulator, run each scenario, stop everything."""
    scenarios = [SCENARIOS[name] for name in args.scenario.split(",") if name]
    report: dict[str, Any] = {
        "command": [sys.executable, "-m", "bench", *argv],
        "machine": machine(),
        "started_at": _now(),
        "scenarios": [],
    }
    _stop_on_sigterm()
    with ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxq-bench-")))
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
        try:
            for scenario in scenarios:
                result = run_scenario(
                    scenario, sides, args, http=http, sim_env=sim_env,
                    redis_url=redis_server.url, work_dir=work_dir,
                )  # fmt: skip
                report["scenarios"].append(result)
                if args.json:
                    args.json.write_text(json.dumps(report, indent=1))
        except (KeyboardInterrupt, SystemExit):
            say("interrupted: stopping every process this benchmark started")
            raise
    report["finished_at"] = _now()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        say(f"wrote {args.json}")
    return report
