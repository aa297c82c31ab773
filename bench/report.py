"""The text report: a table per scenario (sides as columns, the oracle last), then the checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Format = Callable[[Any], str]


def _fixed(digits: int) -> Format:
    return lambda value: f"{value:.{digits}f}"


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}%"


ROWS: tuple[tuple[str, str, Format], ...] = (
    ("jobs done", "done", str),
    ("jobs not done", "failed", str),
    ("makespan s (1st submit→last Ready)", "makespan_s", _fixed(2)),
    ("utilisation of the cap", "utilisation", _percent),
    ("  as % of the oracle's", "utilisation_of_oracle", _percent),
    ("wall s (1st job→last saved)", "wall_s", _fixed(2)),
    ("submits/job", "submits_per_job", _fixed(3)),
    ("429s", "rate_limited_429", str),
    ("max active", "max_active", str),
    ("polls/job", "polls_per_job", _fixed(2)),
    ("polls/s", "polls_per_s", _fixed(1)),
    ("downloads/job", "downloads_per_job", _fixed(2)),
    ("slot refill p50 s (Ready→next submit)", "refill_p50_s", _fixed(3)),
    ("slot refill p90 s", "refill_p90_s", _fixed(3)),
    ("Ready→detected mean s", "detected_mean_s", _fixed(3)),
    ("Ready→detected p50 s", "detected_p50_s", _fixed(3)),
    ("Ready→detected p95 s", "detected_p95_s", _fixed(3)),
    ("Ready→saved p50 s", "saved_p50_s", _fixed(3)),
    ("Ready→saved p95 s", "saved_p95_s", _fixed(3)),
    ("Ready→saved p99 s", "saved_p99_s", _fixed(3)),
    ("CPU s/job (client: workers + API)", "cpu_s_per_job", _fixed(4)),
    ("  workers", "cpu_workers_s_per_job", _fixed(4)),
    ("  fluxq api", "cpu_api_s_per_job", _fixed(4)),
    ("Redis CPU s/job", "cpu_redis_s_per_job", _fixed(4)),
    ("CPU s (run)", "cpu_s", _fixed(2)),
    ("CPU s (start-up)", "startup_cpu_s", _fixed(2)),
    ("peak RSS MB", "peak_rss_mb", _fixed(0)),
    ("Redis commands/job (broker too)", "redis_commands_per_job", _fixed(1)),
)


def _cell(metrics: Mapping[str, Any], key: str, fmt: Format) -> str:
    if key not in metrics:
        return ""
    value = metrics[key]
    return "—" if value is None else fmt(value)


def headline(scenario: Mapping[str, Any]) -> str:
    """The line above a scenario's table: what was run, at what size and speed."""
    return (
        f"scenario {scenario['scenario']} ({scenario['latency_text']}): N={scenario['n']} "
        f"time_scale={scenario['time_scale']:g} seed={scenario['seed']} cap={scenario['cap']} "
        f"endpoint={scenario['endpoint']}"
    )


def table(scenario: Mapping[str, Any]) -> str:
    """Metrics as rows, each side a column, the oracle last."""
    columns: dict[str, Mapping[str, Any]] = {
        name: side["metrics"] for name, side in scenario["sides"].items()
    }
    columns["oracle"] = scenario["oracle"]
    header = ["", *columns]
    lines = [header]
    for label, key, fmt in ROWS:
        lines.append([label, *(_cell(metrics, key, fmt) for metrics in columns.values())])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def findings(scenario: Mapping[str, Any]) -> str:
    """The sanity checks (loud when failed) and fluxq's own counters, side by side."""
    lines: list[str] = []
    for name, side in scenario["sides"].items():
        checks = side["metrics"]["checks"]
        if checks:
            lines.extend(f"!!! CHECK FAILED [{name}]: {problem}" for problem in checks)
        else:
            lines.append(f"checks [{name}]: all jobs done, 1 submit/job, max active within cap")
        extra = side["extra"]
        if "counters" in extra:
            counters = extra["counters"]
            shown = " ".join(f"{k}={v}" for k, v in sorted(counters.items()))
            lines.append(f"fluxq counters [{name}]: {shown or 'none'}")
        if extra.get("cap_state"):
            shown = " ".join(f"{k}={v}" for k, v in sorted(extra["cap_state"].items()))
            lines.append(f"fluxq cap state [{name}]: {shown}")
        if extra.get("retries_429"):
            lines.append(f"naive 429 retries [{name}]: {extra['retries_429']}")
    return "\n".join(lines)


BROWNOUT_ROWS: tuple[tuple[str, str, Format], ...] = (
    ("images saved", "images", str),
    ("images/min before the kill", "images_per_min_before_kill", _fixed(0)),
    ("images/min from the kill to the 503s", "images_per_min_kill_to_outage", _fixed(0)),
    ("images/min during the 503 minute", "images_per_min_during_outage", _fixed(0)),
    ("images/min in the minute after", "images_per_min_after_outage", _fixed(0)),
    ("first new image after the kill s", "first_new_image_after_kill_s", _fixed(1)),
    ("POSTs in flight at the kill", "slow_posts_at_kill", str),
    ("paid twice (duplicate submits)", "paid_twice", str),
    ("tasks paid, image never fetched", "tasks_paid_never_fetched", str),
    ("429s", "rate_limited_429", str),
    ("max active", "max_active", str),
    ("stopped by the deadline", "deadline_hit", str),
    ("wall s", "wall_s", _fixed(0)),
)


def _columns(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def brownout_text(report: Mapping[str, Any], *, header_only: bool = False) -> str:
    """``python -m bench brownout``'s figure: images per minute over time for each side, the
    faults marked, then a table of what each side saved, paid and lost."""
    plan = report["plan"]
    head = (
        f"brownout, scenario {report['scenario']} ({report['latency_text']}): N={report['n']} "
        f"time_scale={report['time_scale']:g} seed={report['seed']} cap={report['cap']}\n"
        f"  faults, from each side's first job: at {plan['kill_at_s']:g} s POSTs answered after "
        f"{plan['slow_post_s']:g} s until the cap is full of them, then SIGKILL of the side's "
        f"process tree and a fresh start; 503 to every POST from {plan['outage_at_s']:g} s for "
        f"{plan['outage_s']:g} s"
    )
    if header_only:
        return head
    sides = report["sides"]
    names = list(sides)
    series = {name: sides[name]["figures"]["images_per_min_series"] for name in names}
    step = plan["bucket_s"]
    kill_at, out_from = plan["kill_at_s"], plan["outage_at_s"]
    out_to = out_from + plan["outage_s"]
    rows = []
    for k in range(max((len(s) for s in series.values()), default=0)):
        t0, t1 = k * step, (k + 1) * step
        mark = "kill" if t0 <= kill_at < t1 else ""
        mark = "503" if t0 < out_to and t1 > out_from else mark
        cells = [f"{s[k]:.0f}" if k < len(s) else "" for s in series.values()]
        rows.append([f"{t0:g}-{t1:g}", *cells, mark])
    over_time = _columns(["t s", *(f"{n} img/min" for n in names), "fault"], rows)
    table_rows = [
        [label, *(_cell(sides[n]["figures"], key, fmt) for n in names)]
        for label, key, fmt in BROWNOUT_ROWS
    ]
    lines = [
        head,
        "",
        "images per minute, per bucket:",
        over_time,
        "",
        _columns(["", *names], table_rows),
    ]
    for name in names:
        side = sides[name]
        if side.get("error"):
            lines.append(f"!!! {name} stopped on an error: {side['error']}")
        if side.get("summary"):
            shown = " ".join(f"{k}={v}" for k, v in sorted(side["summary"].items()))
            lines.append(f"{name}: {shown}")
    return "\n".join(lines)
