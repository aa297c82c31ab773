"""Turn one side's run and the simulator's record of it into the figures the report shows.

The simulator is the judge: makespan, utilisation, polls and submits come from its timeline and
counters, never from the client's own account of itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.oracle import Schedule, percentile, utilisation
from bench.sides import SideRun

LATENCY_TOLERANCE_S = 1e-6
"""How far a task's duration may be from the oracle's for the same prompt (floats only)."""


def one_line(text: str, limit: int = 300) -> str:
    """An error (perhaps with a log's tail) as one short line for the report."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _spread(values: Sequence[float], prefix: str, qs: Sequence[int]) -> dict[str, float | None]:
    return {f"{prefix}_p{q}_s": percentile(values, q) for q in qs}


def refill_gaps(tasks: Sequence[Mapping[str, Any]], cap: int) -> list[float]:
    """Seconds each freed slot stood idle: the k-th Ready to the (k + cap)-th submit.

    With the cap full, the (k + cap)-th task can only start once k tasks have ended, so the gap
    between the k-th end and that start is the time a client took to refill the slot (the
    oracle's is 0). Its sum over the run is what separates a side from the oracle.
    """
    created = sorted(task["created_at"] for task in tasks)
    ready = sorted(task["ready_at"] for task in tasks)
    return [created[k + cap] - ready[k] for k in range(len(created) - cap)]


def side_metrics(
    run: SideRun,
    tasks: Sequence[Mapping[str, Any]],
    account: Mapping[str, Any],
    *,
    n: int,
    cap: int,
    oracle: Schedule,
    expected_s: Mapping[str, float],
) -> dict[str, Any]:
    """Every figure of one side, plus ``checks``: the sanity checks it failed, in words."""
    by_id = {task["id"]: task for task in tasks}
    done = [job for job in run.jobs if job.error is None and job.saved_at is not None]
    created = min((task["created_at"] for task in tasks), default=0.0)
    ready = max((task["ready_at"] for task in tasks), default=0.0)
    makespan = ready - created if tasks else 0.0
    busy = math.fsum(task["duration_s"] for task in tasks)
    used = utilisation(busy, cap, makespan)
    saved = [
        job.saved_at - by_id[job.task_id]["ready_at"]
        for job in done
        if job.saved_at is not None and job.task_id in by_id
    ]
    detected = [
        task["first_terminal_poll_at"] - task["ready_at"]
        for task in tasks
        if task["first_terminal_poll_at"] is not None
    ]
    latency_error = max(
        (abs(task["duration_s"] - expected_s.get(task["prompt"], math.inf)) for task in tasks),
        default=0.0,
    )
    last_saved = max((job.saved_at for job in done if job.saved_at is not None), default=None)
    metrics: dict[str, Any] = {
        "done": len(done),
        "failed": n - len(done),
        "makespan_s": makespan,
        "utilisation": used,
        "utilisation_of_oracle": _ratio(used, oracle.utilisation),
        "wall_s": last_saved - run.started_at if last_saved is not None else None,
        "submits_per_job": _ratio(account.get("submits", 0), n),
        "rate_limited_429": account.get("rate_limited_429", 0),
        "max_active": account.get("max_active", 0),
        "polls_per_job": _ratio(account.get("polls", 0), n),
        "polls_per_s": _ratio(account.get("polls", 0), makespan),
        "detected_mean_s": math.fsum(detected) / len(detected) if detected else None,
        "downloads_per_job": _ratio(account.get("downloads", 0), n),
        **_spread(detected, "detected", (50, 95)),
        **_spread(refill_gaps(tasks, cap), "refill", (50, 90)),
        **_spread(saved, "saved", (50, 95, 99)),
        "cpu_s": run.cpu_s,
        "cpu_s_per_job": _ratio(run.cpu_s, n),
        **{
            f"{part}_per_job": _ratio(run.extra[part], n)
            for part in ("cpu_workers_s", "cpu_api_s", "cpu_redis_s")
            if part in run.extra
        },
        "startup_cpu_s": run.startup_cpu_s,
        "peak_rss_mb": run.peak_rss_bytes / 2**20,
        "redis_commands_per_job": _ratio(run.extra["redis_commands"], n)
        if "redis_commands" in run.extra
        else None,
        "latency_error_s": latency_error,
    }
    metrics["checks"] = _checks(run, metrics, n=n, cap=cap, unmatched=len(done) - len(saved))
    return metrics


def _checks(run: SideRun, m: Mapping[str, Any], *, n: int, cap: int, unmatched: int) -> list[str]:
    """The benchmark's own sanity checks; each failure is a sentence, printed loudly."""
    problems = []
    if run.error:
        problems.append(f"stopped early: {one_line(run.error)}")
    if m["done"] != n:
        errors = sorted({job.error for job in run.jobs if job.error})[:3]
        why = f": {'; '.join(errors)}" if errors else ""
        problems.append(f"{m['done']}/{n} jobs done, {m['failed']} not{why}")
    if m["submits_per_job"] != 1.0:
        problems.append(f"submits/job is {m['submits_per_job']}, not 1.0 (n={n})")
    if m["max_active"] > cap:
        problems.append(f"max active {m['max_active']} is above the cap {cap}")
    if unmatched:
        problems.append(f"{unmatched} done jobs name no task of this account")
    if m["latency_error_s"] > LATENCY_TOLERANCE_S:
        problems.append(f"task durations differ from the oracle's by {m['latency_error_s']:.3g} s")
    return problems


def oracle_metrics(schedule: Schedule) -> dict[str, Any]:
    """The oracle's column: what zero-gap list scheduling achieves on the same durations."""
    return {
        "makespan_s": schedule.makespan_s,
        "utilisation": schedule.utilisation,
        "utilisation_of_oracle": 1.0,
        "busy_s": schedule.busy_s,
    }
