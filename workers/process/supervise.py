"""The process ``fluxq worker`` becomes once its checks pass: the supervisor, and nothing else.

``fluxq worker`` parses its options, checks the settings and reaches Redis (starting the embedded
one if none is set) with the whole CLI loaded: typer, rich, pydantic settings, redis-py and
httpx, about 65 MB resident. Supervising needs none of it, so the command then replaces itself
(``os.execve``: same pid, so signals and ``kill`` still reach it) with
``python -P -m fluxq.workers.process.supervise``, which imports only the standard library and the
supervisor: about 20 MB. The price is one interpreter start-up, about 0.1 s, once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fluxq.workers.process.children import python_argv
from fluxq.workers.process.supervisor import Supervisor, WorkerSpec, default_specs

MODULE = "fluxq.workers.process.supervise"


def worker_process_argv(spec: WorkerSpec, loglevel: str) -> list[str]:
    """How the supervisor starts one worker process (``fluxq.worker_process``)."""
    return python_argv(
        "fluxq.worker_process",
        "--name", spec.name, "--queues", ",".join(spec.queues),
        "--threads", str(spec.threads), "--loglevel", loglevel,
    )  # fmt: skip


def supervise_argv(*, threads: int, save_threads: int, loglevel: str) -> list[str]:
    """The command line ``fluxq worker`` replaces itself with."""
    return python_argv(
        MODULE, "--threads", str(threads), "--save-threads", str(save_threads),
        "--loglevel", loglevel,
    )  # fmt: skip


def become_supervisor(
    *, threads: int, save_threads: int, loglevel: str, env: dict[str, str]
) -> None:
    """Replace this process with the supervisor (never returns)."""
    argv = supervise_argv(threads=threads, save_threads=save_threads, loglevel=loglevel)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)  # noqa: S606 - this interpreter, argv built by fluxq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--save-threads", type=int, required=True)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    specs = default_specs(threads=args.threads, save_threads=args.save_threads)
    supervisor = Supervisor(
        specs, argv_for=lambda spec: worker_process_argv(spec, args.loglevel), env=dict(os.environ)
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
