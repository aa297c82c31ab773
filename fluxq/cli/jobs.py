"""``fluxq enqueue``, ``status``, ``resume`` and ``cancel``: jobs and admission from a terminal."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from fluxq.cli.batch_view import KeyView, clock
from fluxq.cli.common import console, err_console, fail, runtime_or_exit, settings_or_exit
from fluxq.cli.waits import WaitWatch, read_key_view
from fluxq.config.errors import InvalidRequest
from fluxq.workers.state.jobs import State

if TYPE_CHECKING:
    from fluxq.workers.runtime import Runtime

WAIT_STEP_S = 0.2


def _parse_params(params: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


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
    settings = settings_or_exit()
    request: dict[str, Any] = {"prompt": prompt, **_parse_params(param)}
    optional = {"width": width, "height": height, "aspect_ratio": aspect_ratio, "seed": seed}
    request.update({k: v for k, v in optional.items() if v is not None})
    if output_format is not None:
        request["output_format"] = output_format
    from fluxq.tasks.enqueue import enqueue  # lazy: the pipeline loads only for commands that act

    rt = runtime_or_exit(settings)
    try:
        job = enqueue(
            rt, endpoint, request, job_id=job_id, batch=batch, name=name, priority=priority
        )
    except InvalidRequest as exc:
        fail(str(exc))
    console.print(f"enqueued job={job} batch={batch} endpoint={endpoint}")
    if wait:
        raise typer.Exit(code=_wait_for(rt, job, timeout_s))


def _note(text: str) -> None:
    err_console.print(f"fluxq: {text}", markup=False, soft_wrap=True)


def _wait_for(rt: Runtime, job_id: str, timeout_s: float) -> int:
    started = time.monotonic()
    deadline = started + timeout_s
    # No worker? Paused? Every slot held (by what, until when)? Said within 10 s.
    watch = WaitWatch(rt.settings, rt.redis, say=_note, job=job_id)
    shown: State | None = None
    try:
        while time.monotonic() < deadline:
            job = rt.store.get(job_id)
            if job is not None and job.state.terminal:
                if job.state is State.DONE:
                    console.print(f"done job={job_id} file={job.path} sha256={job.sha256}")
                    return 0
                console.print(f"{job.state.value} job={job_id} reason={job.reason}")
                return 1
            if job is not None and job.state is not shown:
                shown = job.state
                _note(f"job {job_id}: {shown.value} ({time.monotonic() - started:.0f} s)")
            watch.check()
            time.sleep(WAIT_STEP_S)
    finally:
        watch.close()
    err_console.print(f"fluxq: job {job_id} did not finish within {timeout_s:.0f} s")
    return 3


def status(batch: str = typer.Option("default", help="The batch to show.")) -> None:
    """Show a batch's counts by state and the key's admission state: tasks at BFL apart from
    slots held for doubtful POSTs, and why waiting jobs wait when admission takes none."""
    settings = settings_or_exit()
    rt = runtime_or_exit(settings)
    counts = rt.store.batch_counts(batch)
    table = Table("state", "jobs", title=f"batch {batch}")
    for state, count in counts.items():
        table.add_row(state, str(count))
    console.print(table)
    now = time.time()
    waiting = sum(rt.limiter.backlog_sizes().values())
    queued = waiting + counts.get(State.QUEUED.value, 0)
    view = read_key_view(rt.redis, settings, now_s=now, waiting=queued > 0)
    for line in _admission_lines(view, waiting):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _admission_lines(view: KeyView, waiting: int) -> list[str]:
    """The key's slots in ``key=value`` words (``at BFL`` and ``held for doubtful POSTs``
    apart), then, when jobs wait and admission takes none, why."""
    slots = view.slots
    doubtful = f"held for doubtful POSTs={slots.doubtful}"
    if slots.doubtful_until is not None:
        doubtful += f" (until {clock(slots.doubtful_until)})"
    held = [f"at BFL={slots.at_bfl}"]
    if slots.sending:
        held.append(f"being sent={slots.sending}")
    held.append(doubtful)
    if slots.stale:
        held.append(f"ended, freed by the next sweep={slots.stale}")
    cap = f"effective cap={slots.effective_cap}"
    if slots.allowed != slots.effective_cap:
        cap += f" (admits {slots.allowed} with the doubtful holds)"
    paused = slots.pause_text or "no"
    lines = [f"{'  '.join(held)}  {cap}  waiting={waiting}  paused={paused}"]
    if view.reason is not None:
        lines.append(f"why nothing is admitted: {view.reason}")
    return lines


def resume() -> None:
    """Resume admission after a 402/403 pause (it also resumes by itself when credits return)."""
    settings = settings_or_exit()
    from fluxq.tasks.admission import admit_and_dispatch  # lazy: the pipeline loads only here

    rt = runtime_or_exit(settings)
    rt.limiter.resume()
    console.print(f"resumed; admitted {admit_and_dispatch(rt)} job(s)")


def cancel(job_id: str = typer.Argument(..., metavar="JOB", help="The job id.")) -> None:
    """Cancel a job not yet sent to BFL (exit 1 when it was sent or had ended already)."""
    from fluxq.tasks.batches import (
        cancel_job,  # lazy: the pipeline loads only for commands that act
    )

    settings = settings_or_exit()
    rt = runtime_or_exit(settings)
    try:
        job = rt.store.get(job_id)
        if job is None:
            fail(f"no job {job_id}{_lane_hint(rt, job_id)}")
        state = cancel_job(rt, job_id)  # only a queued job is cancelled
        if state is None:
            fail(f"no job {job_id}")
    finally:
        rt.close()
    if state is State.CANCELLED:
        console.print(f"job {job_id}: cancelled", markup=False)
        return
    if state.terminal:
        console.print(
            f"job {job_id}: already ended ({state.value}), nothing to cancel", markup=False
        )
    else:
        sent = "being sent" if state is State.ADMITTED else "already sent"
        console.print(
            f"job {job_id}: {state.value}, {sent} to BFL (which has no cancel): "
            "it will finish and be saved",
            markup=False,
        )
    raise typer.Exit(code=1)


def _lane_hint(rt: Runtime, job_id: str) -> str:
    """Why a batch line's id may have no job yet: lines wait in their lane without one."""
    batch, dot, _line = job_id.partition(".")
    if dot and rt.store.batch_record(batch):
        return (
            f" (a line of batch {batch} still waiting has no job yet: "
            f"`fluxq batch cancel {batch}` cancels the batch's waiting lines)"
        )
    return ""


def register(app: typer.Typer) -> None:
    app.command("enqueue")(enqueue_command)
    app.command("status")(status)
    app.command("resume")(resume)
    app.command("cancel")(cancel)
