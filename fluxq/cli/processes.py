"""``fluxq worker`` and ``fluxq demo``: the commands that run processes (Flower: ``flower.py``)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from fluxq.cli.common import console, fail, runtime_or_exit, settings_or_exit
from fluxq.config.celery import DEFAULT_SAVE_THREADS, DEFAULT_THREADS
from fluxq.config.settings import DEFAULT_ALLOWED_URLS, Settings


def _require_bfl_target(settings: Settings) -> None:
    """Refuse to start where nothing would succeed: the real API without a key, or a local server
    (a simulator) whose polling and delivery hosts FLUXQ_ALLOWED_URLS would refuse after every
    paid submit."""
    if settings.bfl_api_key is None and "bfl." in settings.bfl_base_url:
        fail(
            "BFL_API_KEY is unset. Set it, or point FLUXQ_BFL_BASE_URL at a simulator "
            "(`fluxq simulator`), or try `fluxq demo`."
        )
    host = urlsplit(settings.bfl_base_url).hostname or ""
    local = host == "localhost" or host.startswith("127.")
    if local and tuple(settings.allowed_urls) == DEFAULT_ALLOWED_URLS:
        fail(
            "FLUXQ_BFL_BASE_URL is a local server (a simulator?) but FLUXQ_ALLOWED_URLS is the "
            "default (BFL's hosts only), so every task's polling URL would be refused after its "
            "submit was paid: set FLUXQ_ALLOWED_URLS as `fluxq simulator` prints it."
        )


def worker(
    threads: int = typer.Option(
        DEFAULT_THREADS, help="Threads for submit, poll and control work (and save, by default)."
    ),
    save_threads: int = typer.Option(
        DEFAULT_SAVE_THREADS,
        help="Threads of a separate save process; 0 (the default) saves in the main one.",
    ),
    loglevel: str = typer.Option("info", help="Celery log level."),
) -> None:
    """Start Celery workers on all fluxq queues (thread pools), until Ctrl-C or SIGTERM."""
    from fluxq.workers.process.supervise import become_supervisor  # lazy: only this command

    settings = settings_or_exit()
    _require_bfl_target(settings)
    env = dict(os.environ)
    # Redis unreachable: one line now, not retries forever. Unset: the embedded Redis of the
    # data dir, started if none runs; it outlives this worker (`fluxq redis stop` stops it).
    rt = runtime_or_exit(settings)
    assert rt.settings.redis_url is not None
    env["FLUXQ_REDIS_URL"] = rt.settings.redis_url
    rt.close()
    # This process becomes the bare supervisor (same pid): the CLI's memory is not kept.
    become_supervisor(threads=threads, save_threads=save_threads, loglevel=loglevel, env=env)


def demo(
    jobs: int = typer.Option(24, min=1, max=1000, help="How many images to generate."),
    time_scale: float = typer.Option(
        0.1, min=0.001, max=1.0, help="Simulator speed-up (only without BFL_API_KEY)."
    ),
    yes: bool = typer.Option(False, "--yes", help="With a real BFL_API_KEY: spend the credits."),
) -> None:
    """Run fluxq end to end on this machine: simulator and embedded Redis when none are set."""
    from fluxq.config.catalog import estimate_credits, validate_request  # lazy: demo only
    from fluxq.demo import DEMO_ENDPOINTS, demo_request, run_demo  # lazy: simulator, uvicorn

    settings = settings_or_exit()
    if settings.bfl_api_key is not None and not yes:
        credits = sum(
            estimate_credits(e, validate_request(e, demo_request(e, i)))
            for i, e in ((i, DEMO_ENDPOINTS[i % len(DEMO_ENDPOINTS)]) for i in range(jobs))
        )
        fail(
            f"demo: BFL_API_KEY is set, so the demo would call {settings.bfl_base_url} "
            f"and spend about {credits:.1f} credits. Add --yes to go ahead, or unset "
            "BFL_API_KEY to use the simulator."
        )
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


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("demo")(demo)
