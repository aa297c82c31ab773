"""Write the README's reliability table from the fault suite's own report lines.

    FLUXQ_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/python -m pytest tests/faults
    .venv/bin/python -m tests.faults.render_readme /tmp/faults.jsonl

Replaces what stands between the two markers in README.md; nothing in the table is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- reliability-table:start (written by tests/faults/render_readme.py) -->"
END = "<!-- reliability-table:end -->"
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


def render(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per case (the last report of a case wins), then the faults."""
    latest = {row["case"]: row for row in rows}
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


def replace_block(text: str, table: str) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README.md lacks the markers {START!r} … {END!r}")
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    README.write_text(replace_block(README.read_text(encoding="utf-8"), render(rows)))
    print(f"README.md: reliability table from {len(rows)} report lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
