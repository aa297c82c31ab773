"""How ``fluxq batch status`` shows a batch: pure text and JSON, no rich, typer or Redis client.

Shared by the command (``fluxq.cli.batch``) and its fast path (``fluxq.cli.fast_status``), so
both print the same bytes for the same batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from workers.state.batches import BatchStatus
from workers.state.jobs import State

STATE_ORDER = (*(state.value for state in State), "uncertain")
"""The counts of a status line, in this order."""


def no_batch_message(name: str) -> str:
    """What a command says when there is no batch ``name``."""
    return f"no batch named {name} (`fluxq batch list` shows every batch)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _credits(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _as_json(status: BatchStatus) -> dict[str, Any]:
    data = dataclasses.asdict(status)
    data["waiting"] = status.waiting
    data["finished"] = status.finished
    return data


def _status_lines(status: BatchStatus) -> list[str]:
    name, counts = status.batch, status.counts
    lines = [
        f"batch {name}: {status.total:,} lines, priority {status.priority}",
        "  " + "  ".join(f"{state} {counts.get(state, 0):,}" for state in STATE_ORDER),
    ]
    if status.images_per_minute is not None:
        eta = "—" if status.eta_s is None or status.finished else _duration(status.eta_s)
        lines.append(f"  {status.images_per_minute:,.1f} images/min, ETA {eta}")
    money = f"  credits: spent {_credits(status.spent)}, committed {_credits(status.committed)}"
    if status.budget is not None:
        money += f", budget {_credits(status.budget)}"
    lines.append(money)
    if status.paused == "budget":
        lines.append(f"  paused: budget — `fluxq batch resume {name} --budget MORE`")
    elif status.paused == "cancelled":
        lines.append("  cancelled (jobs already sent finish and are saved)")
    elif status.paused:
        lines.append(f"  paused: {status.paused}")
    if status.reasons:
        lines.append("  failures by reason:")
        lines += [f"    {count:,}  {reason}" for reason, count in status.reasons.items()]
    return lines
