"""The BFL simulator in a process of its own, so its CPU is not charged to any side.

``python -m bench.simserver --config JSON`` binds three loopback listeners on free ports, prints
one JSON line (the environment that points fluxq at it), and serves until SIGTERM or until its
stdin closes: a benchmark that dies, however it dies, takes its simulator with it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from fluxq.simulator.config import SimConfig
from fluxq.simulator.server import SimulatorServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.simserver")
    parser.add_argument("--config", default="{}", help="SimConfig fields as a JSON object.")
    args = parser.parse_args(argv)
    config = SimConfig.model_validate(json.loads(args.config))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with SimulatorServer(config) as server:
        print(json.dumps(server.env()), flush=True)
        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
        while not stop.is_set() and server.running:
            stop.wait(0.5)


if __name__ == "__main__":
    main()
