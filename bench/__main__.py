"""``python -m bench throughput …`` (``bench/throughput.py``) and ``python -m bench enqueue …``
(``bench/enqueue.py``)."""

from __future__ import annotations

import argparse
import sys

from bench.enqueue import add_arguments as add_enqueue_arguments
from bench.enqueue import run_enqueue
from bench.plan import SCENARIOS, choose_sides, parse_side
from bench.throughput import add_arguments, run_throughput


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("throughput", help="fluxq vs the naive loop vs the oracle"))
    add_enqueue_arguments(commands.add_parser("enqueue", help="a large batch file into fluxq"))
    args = parser.parse_args(argv)
    if args.command == "enqueue":
        if args.lines < 1 or args.naive_lines < 1:
            parser.error("--lines and --naive-lines must be at least 1")
        run_enqueue(args, argv)
        return 0
    unknown = [name for name in args.scenario.split(",") if name and name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.n < 1 or args.cap < 1 or args.time_scale <= 0:
        parser.error("--n and --cap must be at least 1, --time-scale above 0")
    try:
        names = [name for name in args.sides.split(",") if name]
        sides = choose_sides(names, [parse_side(text) for text in args.side])
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = run_throughput(args, argv, sides)
    except KeyboardInterrupt:
        return 130  # everything started is stopped already; the traceback would say nothing
    failed = [
        name
        for scenario in report["scenarios"]
        for name, side in scenario["sides"].items()
        if side["metrics"]["checks"]
    ]
    if failed:
        print(f"!!! sanity checks failed for: {', '.join(failed)} (see above)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
