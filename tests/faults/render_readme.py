"""Write the README's reliability tables from the fault suite's own report lines.

    FLUXQ_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/python -m pytest tests/faults
    .venv/bin/python -m tests.faults.render_readme /tmp/faults.jsonl [--before OLD.jsonl] [--print]

Two blocks, each between its own markers: the reliability table (every case but the brownouts)
and the brownout table (cases reporting images per minute, tests/faults/test_brownouts.py). A
block is rewritten only when the file has rows for it, so a run of test_brownouts.py alone
refreshes the brownout table and leaves the other one as it was. The brownout block goes right
after the reliability block the first time. ``--before OLD.jsonl``: the same brownout cases run on
the code before a change, shown as a "before" row above each case's "after" row. ``--print``
prints the blocks instead of writing README.md. Nothing in a table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- reliability-table:start (written by tests/faults/render_readme.py) -->"
END = "<!-- reliability-table:end -->"
BROWNOUT_START = "<!-- brownout-table:start (written by tests/faults/render_readme.py) -->"
BROWNOUT_END = "<!-- brownout-table:end -->"
COLUMNS = (
    ("case", "case"),
    ("jobs", "jobs"),
    ("done", "done"),
    ("failed", "failed"),
    ("uncertain", "uncertain"),
    ("lost", "lost"),
    ("duplicate_submits_outside_uncertain", "paid twice"),
    ("max_active", "max active"),
    ("cap", "cap"),
    ("orphan_files", "orphan files"),
    ("elapsed_s", "seconds"),
)
BROWNOUT_MARK = "images_per_min_before"
"""A report line with this field is a brownout case's."""


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):  # one figure per fault of a case that injects several
        return " / ".join(_text(item) for item in value)
    if isinstance(value, float):
        return f"{value:.1f}".removesuffix(".0")
    return str(value)


BROWNOUT_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("case", lambda row: row["case"]),
    ("code", lambda row: row.get("_run", "")),
    ("jobs", lambda row: row["jobs"]),
    ("done", lambda row: row["done"]),
    ("failed", lambda row: row["failed"]),
    ("uncertain", lambda row: row["uncertain"]),
    ("lost", lambda row: row["lost"]),
    ("paid twice", lambda row: row["duplicate_submits_outside_uncertain"]),
    ("max active / cap", lambda row: f"{row['max_active']} / {row['cap']}"),
    ("images/min before", lambda row: row["images_per_min_before"]),
    ("during", lambda row: row["images_per_min_during"]),
    ("after", lambda row: row["images_per_min_after"]),
    ("back to 90 % (s after)", lambda row: row.get("recovery_s")),
    ("seconds", lambda row: round(row["elapsed_s"], 1)),
)


def _latest(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per case: the last report of a case wins."""
    return {row["case"]: row for row in rows}


def render(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per case (the last report of a case wins), then the faults."""
    latest = _latest(rows)
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in latest.values():
        cells = [str(round(row[k], 1)) if k == "elapsed_s" else str(row[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Faults injected per case:")
    lines.append("")
    lines.extend(f"- `{row['case']}`: {row['faults_injected']}" for row in latest.values())
    return "\n".join(lines)


def _brownout_notes(row: dict[str, Any]) -> str:
    """What a brownout case reported beyond the table's columns, in a few words."""
    notes = []
    if "admission_resumed_after_kill_s" in row and row["admission_resumed_after_kill_s"] is None:
        notes.append("no admission after the kill while the case waited (150 s)")
    for key, words in (
        ("admission_resumed_after_kill_s", "admission resumed {} s after the kill"),
        ("posts_in_flight_at_kill", "{} POSTs in flight at the kill"),
        ("longest_admission_stall_s", "longest admission stall {} s"),
        ("lost_answers", "{} answers lost"),
        ("uncertain_without_bfl_task", "{} uncertain with no task at BFL"),
        ("rate_limited_429", "{} 429s"),
        ("failover_s", "failovers took {} s"),
        ("throughput_lost_s_per_failover", "each cost {} s of full throughput"),
        ("service_enqueue_errors", "{} service enqueues retried"),
    ):
        if row.get(key):  # absent, None or 0: nothing to say
            notes.append(words.format(_text(row[key])))
    return "; ".join(notes)


def render_brownouts(rows: list[dict[str, Any]], before: list[dict[str, Any]]) -> str:
    """The brownout table: lost, paid twice, uncertain, max active against the cap, and images
    per minute before, during and after each fault; a "before" row per case from ``before``."""
    latest, earlier = _latest(rows), _latest(before)
    columns = [c for c in BROWNOUT_COLUMNS if earlier or c[0] != "code"]
    titles = [title for title, _ in columns]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for case, row in latest.items():
        pair = [{**earlier[case], "_run": "before"}] if case in earlier else []
        pair.append({**row, "_run": "after"})
        for shown in pair:
            cells = [_text(get(shown)) for _, get in columns]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Faults injected, and what else each case reported:", ""]
    for case, row in latest.items():
        lines.append(f"- `{case}`: {row['faults_injected']}")
        for label, reported in (("before", earlier.get(case)), ("after", row)):
            if reported is not None and (notes := _brownout_notes(reported)):
                lines.append(f"  - {label if case in earlier else 'reported'}: {notes}")
    return "\n".join(lines)


def replace_block(text: str, table: str, start: str = START, end: str = END) -> str:
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found_start or not found_end:
        raise SystemExit(f"README.md lacks the markers {start!r} … {end!r}")
    return f"{head}{start}\n{table}\n{end}{tail}"


def place_brownouts(text: str, table: str) -> str:
    """Replace the brownout block, or put a new one right after the reliability block."""
    if BROWNOUT_START in text:
        return replace_block(text, table, BROWNOUT_START, BROWNOUT_END)
    head, found, tail = text.partition(END)
    if not found:
        raise SystemExit(f"README.md lacks the marker {END!r}")
    block = (
        "\n\nBrownouts (`tests/faults/test_brownouts.py`): BFL half-working for 30 s to a minute "
        "mid-batch (each window as long as the guard it tests needs), on fluxq's default "
        "settings; images per minute before, during and after the fault window:"
        f"\n\n{BROWNOUT_START}\n{table}\n{BROWNOUT_END}"
    )
    return f"{head}{END}{block}{tail}"


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.render_readme",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("report", type=Path, help="FAULT-REPORT lines (FLUXQ_FAULT_REPORT)")
    parser.add_argument("--before", type=Path, help="brownout lines of a run before a change")
    parser.add_argument("--print", action="store_true", help="print instead of writing README")
    args = parser.parse_args(argv)
    rows = _read(args.report)
    before = [row for row in _read(args.before) if BROWNOUT_MARK in row] if args.before else []
    brownouts = [row for row in rows if BROWNOUT_MARK in row]
    others = [row for row in rows if BROWNOUT_MARK not in row]
    blocks = []
    text = README.read_text(encoding="utf-8")
    if others:
        blocks.append(render(others))
        text = replace_block(text, blocks[-1])
    if brownouts:
        blocks.append(render_brownouts(brownouts, before))
        text = place_brownouts(text, blocks[-1])
    if args.print:
        print("\n\n".join(blocks))
        return 0
    README.write_text(text, encoding="utf-8")
    print(
        f"README.md: {len(others)} reliability and {len(brownouts)} brownout report lines"
        + (f" ({len(before)} before)" if before else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
