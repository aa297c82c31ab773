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
    ("downloads/job", "downloads_per_job", _fixed(2)),
    ("slot refill p50 s (Ready→next submit)", "refill_p50_s", _fixed(3)),
    ("slot refill p90 s", "refill_p90_s", _fixed(3)),
    ("Ready→detected p50 s", "detected_p50_s", _fixed(3)),
    ("Ready→detected p95 s", "detected_p95_s", _fixed(3)),
    ("Ready→saved p50 s", "saved_p50_s", _fixed(3)),
    ("Ready→saved p95 s", "saved_p95_s", _fixed(3)),
    ("Ready→saved p99 s", "saved_p99_s", _fixed(3)),
    ("CPU s/job", "cpu_s_per_job", _fixed(4)),
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
