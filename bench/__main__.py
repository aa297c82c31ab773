"""``python -m bench throughput …`` (``bench/throughput.py``), ``python -m bench enqueue …``
(``bench/enqueue.py``) and ``python -m bench brownout …`` (``bench/brownout.py``)."""

from __future__ import annotations

import argparse
import sys

from bench.brownout import add_arguments as add_brownout_arguments
from bench.brownout import run_brownout
from bench.enqueue import add_arguments as add_enqueue_arguments
from bench.enqueue import run_enqueue
from bench.plan import SCENARIOS, choose_sides, parse_side
from bench.throughput import add_arguments, run_throughput


def brownout(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    """``python -m bench brownout``: 1 when a side stopped on an error."""
    if args.scenario not in SCENARIOS:
        parser.error(f"unknown scenario {args.scenario}; known: {', '.join(SCENARIOS)}")
    if args.n < 1 or args.cap < 1 or args.time_scale <= 0:
        parser.error("--n and --cap must be at least 1, --time-scale above 0")
    try:
        report = run_brownout(args, argv)
    except KeyboardInterrupt:
        return 130  # everything started is stopped already
    errors = [name for name, side in report["sides"].items() if side["error"]]
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_arguments(commands.add_parser("throughput", help="fluxq vs the naive loop vs the oracle"))
    add_enqueue_arguments(commands.add_parser("enqueue", help="a large batch file into fluxq"))
    add_brownout_arguments(
        commands.add_parser("brownout", help="fluxq and the naive loop through a kill and 503s")
    )
    args = parser.parse_args(argv)
    if args.command == "brownout":
        return brownout(parser, args, argv)
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
