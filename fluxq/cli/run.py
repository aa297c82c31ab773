"""``fluxq run FILE --endpoint E``: a batch file, end to end, on one machine, in one command.

It uses FLUXQ_REDIS_URL or, unset, the embedded Redis the other commands share; checks and
enqueues the file with the very code of ``fluxq batch submit`` (the batch is named after the
file's stem unless ``--name``; job ids come from the batch name and each line's id, so the same
command run again adds only what is missing); starts a ``fluxq worker`` tree as a child; shows
progress, ETA, credits and why it waits (``fluxq.cli.waits``); stops the worker and prints a
summary by reason. Exit 0 when every line is done, 1 when any failed, was cancelled or was not
added (a name conflict), 2 for a problem the user can fix, 130 after Ctrl-C (the worker is
stopped with SIGTERM, so it finishes what it holds; run the same command again to go on).

``--simulate`` runs the BFL simulator in this process on free loopback ports and points the
worker at it (FLUXQ_BFL_BASE_URL, FLUXQ_ALLOWED_URLS, a simulator key): no credit is spent.
The simulator's tasks live in this process, so jobs still at the simulator when a simulated run
is interrupted fail when it is run again (against a real BFL they are polled and saved).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer
from pydantic import SecretStr

from fluxq.cli import batch as batch_cli
from fluxq.cli.batch_view import status_lines
from fluxq.cli.common import console, err_console, fail, runtime_or_exit, settings_or_exit
from fluxq.cli.waits import WaitWatch
from fluxq.config.celery import DEFAULT_THREADS
from fluxq.config.settings import Settings
from fluxq.workers.state.batches import DEFAULT_BATCH_PRIORITY, BatchStatus, read_batch_status
from fluxq.workers.state.jobs import State

if TYPE_CHECKING:
    from fluxq.simulator import SimulatorServer
    from fluxq.workers.runtime import Runtime

SIMULATOR_KEY = "fluxq-run-simulator-key"
"""The API key a simulated run gives its worker: any non-empty key opens a simulator account."""
SIMULATED_TIME_SCALE = 0.1
"""``--simulate``'s default speed-up: a 4 s model takes 0.4 s."""
WORKER_STOP_TIMEOUT_S = 30.0
"""How long the worker gets to finish what it holds after SIGTERM before it is killed."""
WORKER_GRACE_S = 20.0
"""How long the worker this command starts may take to answer before "no worker" is said."""
WORKER_LOG = "worker.log"
"""The worker's log, in the batch's directory."""


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _note(text: str) -> None:
    err_console.print(f"fluxq: {text}", markup=False, soft_wrap=True)


def _batch_name(file: Path, name: str | None) -> str:
    if name is not None:
        return name
    from fluxq.batch_submit import name_problem  # lazy: the pipeline loads only when acting

    stem = file.stem
    problem = name_problem(stem)
    if problem is not None:
        fail(f"the file's name {stem[:40]!r} cannot name a batch ({problem}): give one with --name")
    return stem


@dataclasses.dataclass
class _Outcome:
    status: BatchStatus | None
    interrupted: bool
    worker_code: int | None
    conflicts: bool
    batch_dir: Path
    log: Path
    elapsed_s: float
    simulator: dict[str, Any] | None


def run_command(
    file: Path = typer.Argument(..., help="A JSONL or CSV file: one request per line or row."),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="The endpoint of lines that name none, e.g. flux-dev."
    ),
    name: str | None = typer.Option(
        None, "--name", help="The batch's name (default: the file's stem); job ids <name>.<id>."
    ),
    simulate: bool = typer.Option(
        False, "--simulate", help="Run against the local BFL simulator: no key, no credits."
    ),
    time_scale: float | None = typer.Option(
        None,
        "--time-scale",
        min=0.0001,
        max=1.0,
        help=f"--simulate: model durations times this (default {SIMULATED_TIME_SCALE}).",
    ),
    threads: int = typer.Option(DEFAULT_THREADS, "--threads", min=1, help="Worker threads."),
    fmt: str | None = typer.Option(
        None, "--format", help="jsonl or csv (default: told by the file's suffix)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for the images (default: <output_dir>/<name>)."
    ),
    budget: float | None = typer.Option(
        None, "--budget", help="Credits the batch may spend; it pauses before going past."
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Run the valid lines; write the bad ones to a file."
    ),
    param: list[str] = typer.Option(
        [], "--param", help="A request field for every line, key=value (a line's own wins)."
    ),
    interval: float = typer.Option(0.5, "--interval", min=0.05, help="Seconds between refreshes."),
) -> None:
    """Run every line of FILE on this machine: Redis, a worker, progress, a summary (exit 1: some
    failed). Ctrl-C stops the worker cleanly; the same command again goes on where it stopped."""
    from fluxq.tasks.batchfile import parse_params  # lazy: the pipeline loads only when acting

    settings = settings_or_exit()
    batch = _batch_name(file, name)
    batch_cli._check_submit_options(settings, batch, endpoint, DEFAULT_BATCH_PRIORITY, budget)
    try:
        params = parse_params(param)
    except ValueError as exc:
        fail(str(exc))
    if time_scale is not None and not simulate:
        fail("--time-scale speeds up the simulator: add --simulate, or leave it out")
    if not simulate and settings.bfl_api_key is None:
        fail(
            "BFL_API_KEY is unset: set it to run the file at BFL (it spends credits), or add "
            "--simulate to run it against the local BFL simulator"
        )
    job = batch_cli._Submit(
        file, batch, endpoint, fmt, out, params, DEFAULT_BATCH_PRIORITY, budget, False, skip_invalid
    )
    outcome = _run(
        settings,
        job,
        simulate=simulate,
        time_scale=SIMULATED_TIME_SCALE if time_scale is None else time_scale,
        threads=threads,
        every=interval,
    )
    raise typer.Exit(code=_summarise(batch, outcome))


class _CtrlC:
    """Whether SIGINT reached this process during the run (whoever handled it)."""

    seen = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _CtrlC.seen = True
    signal.default_int_handler(signum, frame)


def _run(
    settings: Settings,
    job: batch_cli._Submit,
    *,
    simulate: bool,
    time_scale: float,
    threads: int,
    every: float,
) -> _Outcome:
    env = dict(os.environ)
    _CtrlC.seen = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    with ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGINT, previous)
        sim = None
        if simulate:
            sim = _start_simulator(stack, time_scale)
            env.update(sim.env(), BFL_API_KEY=SIMULATOR_KEY)
            settings = settings.with_overrides(
                **sim.settings_overrides(), bfl_api_key=SecretStr(SIMULATOR_KEY)
            )
        rt = runtime_or_exit(settings)  # FLUXQ_REDIS_URL, else the embedded Redis (said once)
        stack.callback(rt.close)
        assert rt.settings.redis_url is not None
        env["FLUXQ_REDIS_URL"] = rt.settings.redis_url
        started = time.monotonic()
        conflicts = batch_cli._submit(rt.settings, rt, job, hints=False) != 0
        batch_dir = batch_cli._batch_dir(rt.settings, rt, job.name, job.out)
        log = batch_dir / WORKER_LOG
        worker = _start_worker(stack, env, log, threads)
        _note(f"started a worker (pid {worker.pid}, {threads} threads); its log: {log}")
        watched = batch_cli._watch(
            rt.store, job.name, every, as_json=False, waits=_waits(rt, job.name, worker)
        )
        if watched.interrupted:
            _note("interrupted: stopping the worker (it finishes what it holds)…")
        status = read_batch_status(rt.store, job.name, now_s=time.time())
        stats = sim.stats(SIMULATOR_KEY) if sim is not None else None
        worker_code = worker.poll()
    return _Outcome(
        status=status,
        # A Ctrl-C reaches the worker too (one process group): when the worker's exit was seen
        # first, the watch ended without the interrupt, but this was still a Ctrl-C.
        interrupted=watched.interrupted or _CtrlC.seen,
        worker_code=worker_code,
        conflicts=conflicts,
        batch_dir=batch_dir,
        log=log,
        elapsed_s=time.monotonic() - started,
        simulator=stats,
    )


def _start_simulator(stack: ExitStack, time_scale: float) -> SimulatorServer:
    from fluxq.simulator import SimConfig, running_simulator  # lazy: uvicorn, only for --simulate

    sim = stack.enter_context(running_simulator(SimConfig(time_scale=time_scale)))
    _note(
        f"--simulate: the local BFL simulator at {sim.base_url} (time scale {time_scale:g}: "
        f"a 4 s model takes {4 * time_scale:.2f} s); no credit is spent"
    )
    return sim


def _start_worker(
    stack: ExitStack, env: dict[str, str], log: Path, threads: int
) -> subprocess.Popen[bytes]:
    from fluxq.workers.process.children import (  # lazy: run only
        python_argv,
        start_child,
        stop_child,
    )

    argv = python_argv("fluxq", "worker", "--threads", str(threads), "--loglevel", "warning")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        worker = start_child(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    # SIGTERM, then wait: the worker's warm shutdown finishes what it holds; the rest waits in
    # Redis for the next run (what was admitted and not sent goes back to its queue).
    stack.callback(stop_child, worker, timeout_s=WORKER_STOP_TIMEOUT_S)
    return worker


def _waits(
    rt: Runtime, batch: str, worker: subprocess.Popen[bytes]
) -> Callable[[Callable[[str], None]], WaitWatch]:
    def make(say: Callable[[str], None]) -> WaitWatch:
        return WaitWatch(
            rt.settings, rt.redis, say=say, batch=batch, grace_s=WORKER_GRACE_S, worker=worker
        )

    return make


def _summarise(batch: str, outcome: _Outcome) -> int:
    """Print the summary; the exit code."""
    status = outcome.status
    if status is None:  # nothing was added (every line conflicted)
        _say(f"batch {batch}: nothing to run")
        return 1
    for line in status_lines(status):
        _say(line)
    counts = status.counts
    done, failed = counts[State.DONE.value], counts[State.FAILED.value]
    cancelled = counts[State.CANCELLED.value]
    _say(
        f"batch {batch}: {done:,} done, {failed:,} failed, {cancelled:,} cancelled, "
        f"{status.waiting:,} waiting of {status.total:,} in {outcome.elapsed_s:.1f} s"
    )
    _say(f"images: {outcome.batch_dir} (manifest.jsonl lists them)")
    if outcome.simulator is not None:
        stats = outcome.simulator
        _say(
            f"simulator saw: {stats['submits']} submits, {stats['duplicate_submits']} "
            f"duplicates, at most {stats['max_active']} active at once"
        )
    if outcome.interrupted:
        _note(f"stopped; `fluxq run` again with the same file and name goes on with batch {batch}")
        return 130
    if failed:
        _say(
            f"each line's reason: `fluxq batch report {batch}`; "
            f"`fluxq batch retry {batch}` runs the failed ones again"
        )
    if not status.finished:
        code = outcome.worker_code
        _note(f"the worker stopped (exit code {code}) before the batch ended: see {outcome.log}")
        return 1
    return 1 if failed or cancelled or outcome.conflicts else 0


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
