"""The ``fluxq`` command line: one Settings object built here and passed down to every command.

Each command is a thin shell over a plain function that tests can call without a terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from config.errors import ConfigError
from config.settings import Settings, load_settings

if TYPE_CHECKING:
    from workers.runtime import Runtime

app = typer.Typer(
    name="fluxq",
    help="Run FLUX image generation through the BFL API at the account's active-task cap.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def root() -> None:
    """fluxq: a Celery task queue for FLUX image generation through the BFL API."""


def settings_or_exit() -> Settings:
    """Load settings or print every bad variable and exit 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        err_console.print(f"[bold red]fluxq:[/] {exc}")
        raise typer.Exit(code=2) from None


@app.command("config")
def show_config() -> None:
    """Print the effective settings (from the environment and .env), secrets masked."""
    settings = settings_or_exit()
    table = Table("setting", "environment variable", "value", title="fluxq settings")
    for name, value in settings.masked().items():
        env = "BFL_API_KEY" if name == "bfl_api_key" else f"FLUXQ_{name.upper()}"
        table.add_row(name, env, value)
    console.print(table)


@app.command("simulator")
def simulator_command(
    host: str = typer.Option("127.0.0.1", help="Loopback address of the API listener."),
    port: int = typer.Option(8080, help="API port; polling and delivery take port+1, port+2."),
    latency: str = typer.Option(
        "", help="Per-endpoint latency, e.g. 'flux-pro-1.1=lognormal:4:9,default=fixed:1'."
    ),
    faults: str = typer.Option(
        "", help="Fault rates, e.g. 'submit_503=0.05,drop=0.01,lost=0.001'."
    ),
    credits: float = typer.Option(1_000_000.0, help="Starting credits of each account."),
    time_scale: float = typer.Option(1.0, help="Multiplies model durations (0.01: 4 s → 40 ms)."),
    retry_after_s: int | None = typer.Option(None, help="Send Retry-After on 429s."),
) -> None:
    """Run the local BFL API simulator and print the settings that point fluxq at it."""
    from pydantic import ValidationError

    from simulator import SimConfig, parse_faults, parse_latency, serve

    try:
        config = SimConfig(
            latency=parse_latency(latency) if latency else {},
            initial_credits=credits,
            time_scale=time_scale,
            retry_after_s=retry_after_s,
            **parse_faults(faults),
        )
    except (ValueError, ValidationError) as exc:
        err_console.print(f"[bold red]fluxq simulator:[/] {exc}")
        raise typer.Exit(code=2) from None
    serve(config, host=host, port=port)


def _announce_embedded(url: str) -> None:
    err_console.print(
        f"[yellow]fluxq:[/] FLUXQ_REDIS_URL is unset: started an embedded Redis at {url} "
        "(this machine only; set FLUXQ_REDIS_URL to share work across machines)"
    )


def _require_bfl_target(settings: Settings) -> None:
    """Refuse to start against the real API without a key (nothing would succeed)."""
    if settings.bfl_api_key is None and "bfl." in settings.bfl_base_url:
        err_console.print(
            "[bold red]fluxq:[/] BFL_API_KEY is unset. Set it, or point FLUXQ_BFL_BASE_URL at "
            "a simulator (`fluxq simulator`), or try `fluxq demo`."
        )
        raise typer.Exit(code=2)


@app.command("worker")
def worker(
    threads: int = typer.Option(16, help="Threads for submit, poll and control work."),
    save_threads: int = typer.Option(
        4, help="Threads of the separate save worker; 0 runs save in the main worker."
    ),
    loglevel: str = typer.Option("info", help="Celery log level."),
) -> None:
    """Start Celery workers on all fluxq queues (thread pools), until Ctrl-C or SIGTERM."""
    from workers.embedded_redis import EmbeddedRedis

    settings = settings_or_exit()
    _require_bfl_target(settings)
    embedded = None
    env = dict(os.environ)
    if not settings.redis_url:
        embedded = EmbeddedRedis().start()
        env["FLUXQ_REDIS_URL"] = embedded.url
        _announce_embedded(embedded.url)
    from workers.supervisor import Supervisor, default_specs

    specs = default_specs(threads=threads, save_threads=save_threads)
    try:
        code = Supervisor(specs, env=env, loglevel=loglevel).run()
    finally:
        if embedded is not None:
            embedded.stop()
    raise typer.Exit(code=code)


def _runtime(settings: Settings) -> Runtime:
    """A producer-side Runtime that dispatches through Celery to the shared Redis."""
    if not settings.redis_url:
        err_console.print(
            "[bold red]fluxq:[/] FLUXQ_REDIS_URL is unset, so there is no shared Redis to enqueue "
            "into. Set it to the Redis your workers use (`fluxq worker` prints it), or run "
            "`fluxq demo`."
        )
        raise typer.Exit(code=2)
    from workers.runtime import celery_runtime

    return celery_runtime(settings)


def _parse_params(params: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err_console.print(f"[bold red]fluxq:[/] --param {item!r} is not key=value")
            raise typer.Exit(code=2)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@app.command("enqueue")
def enqueue_command(
    endpoint: str = typer.Option(..., help="BFL endpoint, e.g. flux-pro-1.1"),
    prompt: str = typer.Option(..., help="The prompt."),
    width: int | None = typer.Option(None),
    height: int | None = typer.Option(None),
    aspect_ratio: str | None = typer.Option(None, help="W:H for Ultra and Kontext."),
    seed: int | None = typer.Option(None),
    output_format: str | None = typer.Option(None, help="jpeg, png or webp."),
    param: list[str] = typer.Option([], help="Any other request field, key=value (repeatable)."),
    batch: str = typer.Option("default"),
    name: str | None = typer.Option(None, help="File name (default: the job id)."),
    priority: int = typer.Option(5, help="0..9, higher runs sooner."),
    job_id: str | None = typer.Option(None, help="Your own id; enqueueing it again is a no-op."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the job ends; print its file."),
    timeout_s: float = typer.Option(1200.0, help="With --wait: give up after this long."),
) -> None:
    """Validate and enqueue one generation job (workers must be running)."""
    from config.errors import InvalidRequest
    from tasks.producer import enqueue

    settings = settings_or_exit()
    request: dict[str, Any] = {"prompt": prompt, **_parse_params(param)}
    optional = {"width": width, "height": height, "aspect_ratio": aspect_ratio, "seed": seed}
    request.update({k: v for k, v in optional.items() if v is not None})
    if output_format is not None:
        request["output_format"] = output_format
    rt = _runtime(settings)
    try:
        job = enqueue(
            rt, endpoint, request, job_id=job_id, batch=batch, name=name, priority=priority
        )
    except InvalidRequest as exc:
        err_console.print(f"[bold red]fluxq:[/] {exc}")
        raise typer.Exit(code=2) from None
    console.print(f"enqueued job={job} batch={batch} endpoint={endpoint}")
    if wait:
        raise typer.Exit(code=_wait_for(rt, job, timeout_s))


def _wait_for(rt: Runtime, job_id: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = rt.store.get(job_id)
        if job is not None and job.state.terminal:
            if job.state.value == "done":
                console.print(f"done job={job_id} file={job.path} sha256={job.sha256}")
                return 0
            console.print(f"{job.state.value} job={job_id} reason={job.reason}")
            return 1
        time.sleep(0.2)
    err_console.print(f"fluxq: job {job_id} did not finish within {timeout_s:.0f} s")
    return 3


@app.command("status")
def status(batch: str = typer.Option("default", help="The batch to show.")) -> None:
    """Show a batch's counts by state and the key's admission state."""
    settings = settings_or_exit()
    rt = _runtime(settings)
    counts = rt.store.batch_counts(batch)
    table = Table("state", "jobs", title=f"batch {batch}")
    for state, count in counts.items():
        table.add_row(state, str(count))
    console.print(table)
    now = time.time()
    paused = rt.limiter.paused(now_s=now)
    console.print(
        f"in flight={rt.limiter.held()} effective cap={rt.limiter.effective_cap(now_s=now)} "
        f"waiting={sum(rt.limiter.backlog_sizes().values())} "
        f"paused={'no' if paused is None else paused}"
    )


@app.command("resume")
def resume() -> None:
    """Resume admission after a 402/403 pause (it also resumes by itself when credits return)."""
    settings = settings_or_exit()
    rt = _runtime(settings)
    rt.limiter.resume()
    from tasks.admission import admit_and_dispatch

    console.print(f"resumed; admitted {admit_and_dispatch(rt)} job(s)")


@app.command("demo")
def demo(
    jobs: int = typer.Option(24, min=1, max=1000, help="How many images to generate."),
    time_scale: float = typer.Option(
        0.1, min=0.001, max=1.0, help="Simulator speed-up (only without BFL_API_KEY)."
    ),
    yes: bool = typer.Option(False, "--yes", help="With a real BFL_API_KEY: spend the credits."),
) -> None:
    """Run fluxq end to end on this machine: simulator and embedded Redis when none are set."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from config.catalog import estimate_credits, validate_request
    from workers.demo import DEMO_ENDPOINTS, demo_request, run_demo

    settings = settings_or_exit()
    if settings.bfl_api_key is not None and not yes:
        credits = sum(
            estimate_credits(e, validate_request(e, demo_request(e, i)))
            for i, e in ((i, DEMO_ENDPOINTS[i % len(DEMO_ENDPOINTS)]) for i in range(jobs))
        )
        err_console.print(
            f"fluxq demo: BFL_API_KEY is set, so the demo would call {settings.bfl_base_url} "
            f"and spend about {credits:.1f} credits. Add --yes to go ahead, or unset "
            "BFL_API_KEY to use the simulator."
        )
        raise typer.Exit(code=2)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("generating", total=jobs)

        def show(counts: dict[str, int], total: int) -> None:
            finished = counts["done"] + counts["failed"] + counts["cancelled"]
            waiting = counts["queued"] + counts["admitted"]
            text = f"done {counts['done']} failed {counts['failed']} in flight " + str(
                counts["submitted"] + counts["ready"]
            )
            bar.update(task, completed=finished, description=f"{text} waiting {waiting}")

        result = run_demo(
            settings, jobs=jobs, time_scale=time_scale, say=console.print, progress=show
        )
    console.print(
        f"batch {result.batch}: {result.counts['done']} done, {result.counts['failed']} failed "
        f"of {jobs} in {result.elapsed_s:.1f} s"
    )
    console.print(
        f"images: {result.output_dir} ({result.verified_files} verified against their sha256; "
        f"manifest.jsonl lists them)"
    )
    if result.simulator_stats is not None:
        stats = result.simulator_stats
        console.print(
            f"simulator saw: {stats['submits']} submits, {stats['duplicate_submits']} duplicates, "
            f"at most {stats['max_active']} active at once (cap 24), "
            f"{stats['rate_limited_429']} 429s, {stats['credits_spent']} credits"
        )
    ok = result.counts["done"] == jobs and result.verified_files == jobs
    raise typer.Exit(code=0 if ok else 1)


@app.command("flower")
def flower(
    port: int = typer.Option(5555, help="Flower's port on 127.0.0.1."),
    address: str = typer.Option("127.0.0.1", help="Flower's address."),
) -> None:
    """Run Flower on fluxq's broker (FLUXQ_REDIS_URL) to watch tasks by job and batch."""
    settings = settings_or_exit()
    if not settings.redis_url:
        err_console.print("[bold red]fluxq:[/] set FLUXQ_REDIS_URL to the Redis your workers use")
        raise typer.Exit(code=2)
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
        f"--address={address}", f"--port={port}",
    ]  # fmt: skip
    raise typer.Exit(code=subprocess.call(argv))  # noqa: S603 - fixed argv


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())


if __name__ == "__main__":
    main()
