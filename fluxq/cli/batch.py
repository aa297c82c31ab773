"""``fluxq batch …``: overnight batches from a JSONL or CSV file, watched, reported and steered.

``submit`` checks every line of the file before any job exists (``tasks.batchfile.scan_file``),
then streams the checked lines into the batch's lanes (``tasks.batches.enqueue_entries``): a
re-run adds only what is missing. ``status``, ``list``, ``cancel``, ``retry``, ``report`` and
``resume`` act on a batch by its name; none of them reads every job except ``cancel``, ``retry``
and ``report``, which stream them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import redis
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fluxq.cli.batch_view import (
    KeySlots,
    KeyView,
    credits_text,
    duration_text,
    no_batch_message,
    status_json,
    status_lines,
)
from fluxq.cli.common import (
    console,
    err_console,
    fail,
    runtime_or_exit,
    settings_or_exit,
    store_or_exit,
    with_redis_or_exit,
)
from fluxq.cli.waits import WaitWatch, read_batch_view
from fluxq.config.settings import Settings
from fluxq.workers.state import keys
from fluxq.workers.state.batches import DEFAULT_BATCH_PRIORITY, BatchStatus, read_batch_status
from fluxq.workers.state.jobs import State
from fluxq.workers.state.store import JobStore

if TYPE_CHECKING:
    from fluxq.batch_submit import SubmitResult
    from fluxq.tasks.batches import EnqueueResult, ReportRow
    from fluxq.tasks.batchfile import LineError, Scan
    from fluxq.workers.runtime import Runtime

# The pipeline (tasks.*, Celery, the catalog's models) is imported inside the commands that act,
# so that read-only commands (status, list) start in a fraction of a second.

MAX_SHOWN_CONFLICTS = 20
"""Conflicting lines listed after a submit, like the bad lines of a refused file."""
REJECTED_FILE = "rejected.jsonl"
QUIET_WATCH_EVERY_S = 10.0
"""Without a terminal, ``status --watch`` prints a line when counts change, at most this often
(why it does not move, if it does not, is said apart by its ``WaitWatch``, within seconds)."""

batch_app = typer.Typer(
    name="batch",
    help="Overnight batches: submit a JSONL or CSV file of prompts, watch, report, steer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --- shared helpers --------------------------------------------------------------------------


@contextmanager
def _runtime(settings: Settings) -> Iterator[Runtime]:
    rt = runtime_or_exit(settings)
    try:
        yield rt
    finally:
        rt.close()


def _status_or_exit(store: JobStore, name: str) -> BatchStatus:
    status = read_batch_status(store, name, now_s=time.time())
    if status is None:
        fail(no_batch_message(name))
    return status


def _dollars(credits: float) -> str:
    """Credits in dollars (1 credit = $0.01), cents always shown and no fraction of one lost."""
    text = f"{credits / 100:,.4f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _say_plain(text: str) -> None:
    """A line of ``batch status`` as given, emoji codes too: rich would turn a ``:name:`` it
    knows (in a failure reason, say) into an emoji, and the fast path, which prints the same
    bytes without rich, cannot tell which names it knows."""
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


def _warn(text: str) -> None:
    err_console.print(text, markup=False, soft_wrap=True)


# --- submit ----------------------------------------------------------------------------------


def _no_terminal() -> bool:
    """Progress bars only on a terminal: in a log or a pipe they would be noise."""
    return not err_console.is_terminal


def _scan_progress() -> Progress:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} lines"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=err_console, transient=True, disable=_no_terminal())


def _enqueue_progress() -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=err_console, transient=True, disable=_no_terminal())


def _line_error(error: LineError) -> str:
    return f"line {error.line}: {error.field}: {error.reason}"


def _print_errors(scan: Scan) -> None:
    for error in scan.errors:
        _warn(_line_error(error))
    shown = len({error.line for error in scan.errors})
    if scan.error_count > shown:
        _warn(f"… and {scan.error_count - shown:,} more bad lines")


def _batch_dir(settings: Settings, rt: Runtime | None, name: str, out: Path | None) -> Path:
    """Where the batch's files (and its rejected lines) go: --out, else what an earlier submit
    set, else ``<output_dir>/<name>``."""
    if out is not None:
        return out.resolve()
    if rt is not None:
        stored = rt.store.batch_record(name).get("out")
        if stored:
            return Path(stored)
    return settings.output_dir / name


def _dry_runtime(settings: Settings) -> Runtime | None:
    """A runtime for a dry run when Redis is there (learned latencies); None without one."""
    from fluxq.workers.dispatch import celery_runtime  # lazy: the pipeline loads only when acting

    if not settings.redis_url:
        return None
    rt = celery_runtime(settings)
    try:
        rt.redis.ping()
    except redis.RedisError:
        rt.close()
        return None
    return rt


def _mean_s(settings: Settings, rt: Runtime | None, endpoint: str) -> tuple[float, bool]:
    """The mean generation time of ``endpoint`` and whether it was learned (not the prior)."""
    from fluxq.workers.poll_schedule import LogNormal  # lazy: the pipeline loads only when acting
    from fluxq.workers.state.latency_book import PRIOR_SIGMA  # lazy: as above

    if rt is None:
        return LogNormal.from_median(settings.poll_prior_median_s, PRIOR_SIGMA).mean_s, False
    learned = bool(rt.redis.llen(keys.latency(endpoint)))
    return rt.latency.model(endpoint, "default").mean_s, learned


def _expected_s(settings: Settings, rt: Runtime | None, by_endpoint: dict[str, int]) -> float:
    """The least time the lines take with every slot busy: all endpoints share the key's cap,
    and the endpoints of a nested cap group share that group's cap too."""
    from fluxq.tasks.batches import group_of  # lazy: the pipeline loads only when acting

    work_s: dict[str, float] = {}
    group_caps: dict[str, int] = {}
    for endpoint, count in by_endpoint.items():
        mean, _ = _mean_s(settings, rt, endpoint)
        group = group_of(endpoint, settings.catalog)
        work_s[group] = work_s.get(group, 0.0) + count * mean
        # The limiter keys nested caps by cap group (a capped endpoint is its own group).
        group_caps[group] = min(settings.endpoint_caps.get(group, settings.active_cap),
                                settings.active_cap)  # fmt: skip
    bounds = [sum(work_s.values()) / settings.active_cap]
    bounds += [work / group_caps[group] for group, work in work_s.items()]
    return max(bounds)


def _print_estimate(settings: Settings, rt: Runtime | None, scan: Scan) -> None:
    from fluxq.config.catalog import PerImage, Unpriced  # lazy: the pipeline loads only when acting

    specs = [settings.catalog[e] for e in scan.by_endpoint]
    unpriced = sorted(spec.endpoint for spec in specs if isinstance(spec.price, Unpriced))
    doubts = []
    if not all(isinstance(spec.price, PerImage | Unpriced) for spec in specs):
        doubts.append("per-megapixel prices depend on image sizes")
    if not all(spec.price_listed for spec in specs):
        doubts.append("some prices are not on BFL's list")
    if unpriced:
        doubts.append("unpriced jobs count 0")
    kind = f"an estimate: {'; '.join(doubts)}" if doubts else "exact for the documented prices"
    endpoints = ", ".join(f"{e} {n:,}" for e, n in sorted(scan.by_endpoint.items()))
    _say(f"jobs: {scan.valid:,} ({endpoints})")
    _say(f"cost: {credits_text(scan.credits)} credits = {_dollars(scan.credits)} ({kind})")
    if unpriced:
        jobs = sum(scan.by_endpoint[e] for e in unpriced)
        _say(
            f"unpriced: {jobs:,} jobs ({', '.join(unpriced)}) have no known price: a budget "
            "counts them only once BFL bills them"
        )
    learned = [_mean_s(settings, rt, e)[1] for e in scan.by_endpoint]
    source = "assumed, none observed yet"
    if all(learned):
        source = "learned so far"
    elif any(learned):
        source = "learned for some endpoints, assumed for others"
    _say(
        f"time: at least about {duration_text(_expected_s(settings, rt, scan.by_endpoint))} "
        f"(mean generation time {source}; assumes all {settings.active_cap} slots stay busy)"
    )


class _SubmitView:
    """``batch submit``'s side of ``submit_file`` (a ``SubmitWatch``): a bar while the file is
    read; before any line goes in, the bad lines it skips and the estimate; a bar while they go in.
    """

    def __init__(
        self,
        settings: Settings,
        rt: Runtime | None,
        job: _Submit,
        rejected_path: Path,
        written: Path,
        rejected: TextIO | None,
    ) -> None:
        self.settings = settings
        self.rt = rt
        self.job = job
        self.rejected_path = rejected_path
        self.written = written
        self.rejected = rejected
        self.adding_lines = False
        """True once lines may have gone in (a Ctrl-C then says the re-run adds the rest)."""
        self._bars = ExitStack()
        self._bar: Progress | None = None
        self._task = TaskID(0)

    def __enter__(self) -> _SubmitView:
        self._show(_scan_progress(), f"checking {self.job.file.name}", None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.close()

    def _show(self, bar: Progress, description: str, total: int | None) -> None:
        self._bar = self._bars.enter_context(bar)
        self._task = bar.add_task(description, total=total)

    def _update(self, completed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)

    def scanning(self, lines: int) -> None:
        self._update(lines)

    def checked(self, scan: Scan) -> None:
        self._bars.close()  # the scan's bar goes before anything is said
        _print_errors(scan)  # with --skip-invalid: the lines left out
        if self.rejected is not None and scan.error_count:
            self.rejected.close()
            _keep_rejected(scan, self.written, self.rejected_path)
        _print_estimate(self.settings, self.rt, scan)
        if not (self.job.dry_run or self.rt is None):
            self._show(_enqueue_progress(), f"adding to batch {self.job.name}", scan.valid)
            self.adding_lines = True

    def adding(self, seen: int) -> None:
        self._update(seen)


def _keep_rejected(scan: Scan, written: Path, rejected_path: Path) -> None:
    try:
        rejected_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, rejected_path)
    except OSError as exc:
        fail(f"nothing enqueued: cannot write {rejected_path}: {exc.strerror or exc}")
    _warn(f"skipped {scan.error_count:,} invalid lines: written to {rejected_path}")


def _print_result(rt: Runtime, name: str, result: EnqueueResult, *, hints: bool = True) -> int:
    from fluxq.tasks.batches import batch_status  # lazy: the pipeline loads only when acting

    conflicts = result.conflicts
    _say(
        f"batch {name}: added {result.added:,}, already there {result.present:,} "
        f"(a re-run adds only what is missing), conflicts {len(conflicts):,}"
    )
    for entry in conflicts[:MAX_SHOWN_CONFLICTS]:
        # The spool keeps no line numbers: a conflict is named by its line's id.
        _warn(
            f"id {entry.line_id}: name: the file name {entry.name!r} is held by another line "
            f"or job of batch {name}: not added"
        )
    if len(conflicts) > MAX_SHOWN_CONFLICTS:
        _warn(f"… and {len(conflicts) - MAX_SHOWN_CONFLICTS:,} more conflicts")
    status = batch_status(rt, name)
    if status is not None and status.paused == "budget":
        _say(f"paused: budget — `fluxq batch resume {name} --budget MORE`")
    if hints:
        _say(f"watch it:  fluxq batch status {name} --watch")
        _say(f"results:   fluxq batch report {name}")
    return 1 if conflicts else 0


def _check_submit_options(
    settings: Settings, name: str, endpoint: str | None, priority: int, budget: float | None
) -> None:
    """The first bad option, as ``--option value: why`` (the limits of ``batch_problems``)."""
    from fluxq.batch_submit import batch_problems  # lazy: the pipeline loads only when acting

    problems = batch_problems(
        name, endpoint=endpoint, priority=priority, budget=budget, catalog=settings.catalog
    )
    if problems:
        given = {
            "name": f" {name[:20]!r}…" if len(name) > 20 else f" {name!r}",
            "priority": f" {priority}",
            "budget": f" {budget:g}" if budget is not None else "",
        }
        option = str(problems[0].loc[0])
        fail(f"--{option}{given.get(option, '')}: {problems[0].msg}")


@batch_app.command("submit")
def submit(
    file: Path = typer.Argument(..., help="A JSONL or CSV file: one request per line or row."),
    name: str = typer.Option(..., "--name", help="The batch's name; job ids are <name>.<id>."),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="The endpoint of lines that name none, e.g. flux-pro-1.1."
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="jsonl or csv (default: told by the file's suffix)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for the images (default: <output_dir>/<name>)."
    ),
    priority: int = typer.Option(
        DEFAULT_BATCH_PRIORITY, "--priority", help="0..9, higher runs sooner."
    ),
    budget: float | None = typer.Option(
        None, "--budget", help="Credits the batch may spend; it pauses before going past."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check the file and print jobs, cost and time; enqueue nothing."
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Enqueue the valid lines; write the bad ones to a file."
    ),
    param: list[str] = typer.Option(
        [], "--param", help="A request field for every line, key=value (a line's own wins)."
    ),
    quote: bool = typer.Option(
        False,
        "--quote",
        help="With --dry-run: ask BFL (POST /v1/pricing) to price the FLUX.2 lines too.",
    ),
) -> None:
    """Check every line of FILE, then enqueue them all as batch NAME (nothing if one is bad)."""
    from fluxq.tasks.batchfile import parse_params  # lazy: the pipeline loads only when acting

    settings = settings_or_exit()
    _check_submit_options(settings, name, endpoint, priority, budget)
    if quote and not dry_run:
        fail("--quote prices a dry run: add --dry-run (a real submit is priced by BFL's answers)")
    if quote and settings.bfl_api_key is None:
        fail("--quote asks BFL for its prices: set BFL_API_KEY (or leave out --quote)")
    try:
        params = parse_params(param)
    except ValueError as exc:
        fail(str(exc))
    job = _Submit(
        file, name, endpoint, fmt, out, params, priority, budget, dry_run, skip_invalid, quote
    )
    rt = _dry_runtime(settings) if dry_run else runtime_or_exit(settings)
    try:
        code = _submit(settings, rt, job)
    finally:
        if rt is not None:
            rt.close()
    raise typer.Exit(code=code)


@dataclasses.dataclass(frozen=True)
class _Submit:
    """What ``fluxq batch submit`` was asked to do."""

    file: Path
    name: str
    endpoint: str | None
    fmt: str | None
    out: Path | None
    params: dict[str, str]
    priority: int
    budget: float | None
    dry_run: bool
    skip_invalid: bool
    quote: bool = False


def _submit(settings: Settings, rt: Runtime | None, job: _Submit, *, hints: bool = True) -> int:
    """Scan, then (unless a dry run) enqueue; the exit code (1: some lines conflicted).
    ``hints``: end with the commands that watch and report the batch."""
    rejected_path = _batch_dir(settings, rt, job.name, job.out) / REJECTED_FILE
    keep = job.skip_invalid and not job.dry_run
    with tempfile.TemporaryDirectory(prefix="fluxq-batch-") as tmp, ExitStack() as files:
        written = Path(tmp) / REJECTED_FILE
        rejected = files.enter_context(written.open("w", encoding="utf-8")) if keep else None
        view = _SubmitView(settings, rt, job, rejected_path, written, rejected)
        submitted = _submit_file(settings, rt, job, view)
    if submitted.dry_run or rt is None:
        if job.quote:
            _print_quote(settings, submitted)
        _say(f"dry run: nothing enqueued ({submitted.lines:,} lines checked)")
        return 0
    return _print_result(rt, job.name, submitted.enqueued, hints=hints)


MAX_QUOTES = 100
"""Distinct (model, size, inputs) shapes a --quote asks BFL about, the commonest first; the
lines of rarer shapes keep the table's price (and the note says how many)."""


def _print_quote(settings: Settings, submitted: SubmitResult) -> None:
    """Ask BFL to price each FLUX.2 shape of a dry run, and print BFL's total beside the table's;
    a deployment without the pricing endpoint (404) leaves the table's price, saying so."""
    from fluxq.config.catalog import ASSUMED_INPUT_SIDE_PX  # lazy: as the client
    from fluxq.config.errors import FluxqError  # lazy: as the client
    from fluxq.workers.bfl.client import BFLClient  # lazy: httpx, only for a quote

    shapes = submitted.shapes
    others = submitted.scan.valid - sum(shapes.values())
    if not shapes:
        _say("quote: no line is of a FLUX.2 model, the only ones BFL's /v1/pricing prices")
        return
    asked = sorted(shapes, key=lambda shape: (-shapes[shape], shape))[:MAX_QUOTES]
    quoted = table = 0.0
    try:
        with BFLClient(settings) as client:
            for shape in asked:
                side = ASSUMED_INPUT_SIDE_PX
                cost = client.quote(
                    shape.endpoint, shape.width, shape.height, [(side, side)] * shape.inputs
                )
                if cost is None:
                    _say(
                        "quote: BFL's /v1/pricing is not available here (404): the table's "
                        "price above stands"
                    )
                    return
                quoted += cost * shapes[shape]
                table += shape.table_credits(catalog=settings.catalog) * shapes[shape]
    except FluxqError as exc:
        fail(f"quote: {exc}")
    lines = sum(shapes[shape] for shape in asked)
    text = (
        f"quote: BFL prices the {_count(lines, 'FLUX.2 line')} at {credits_text(quoted)} credits = "
        f"{_dollars(quoted)} (the table: {credits_text(table)})"
    )
    rest = sum(shapes.values()) - lines
    if rest:
        text += f"; {_count(rest, 'line')} of rarer sizes keep the table's price"
    if others:
        text += f"; {_count(others, 'line')} of other models keep the table's price"
    _say(text)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _submit_file(
    settings: Settings, rt: Runtime | None, job: _Submit, view: _SubmitView
) -> SubmitResult:
    """``submit_file`` with each refusal one line (exit 2), and a Ctrl-C while lines go in."""
    from fluxq.batch_submit import (  # lazy: the pipeline loads only when acting
        BadLines,
        CancelledBatch,
        FileRefused,
        NoLines,
        submit_file,
    )

    try:
        with view:
            return submit_file(
                rt,
                job.file,
                name=job.name,
                endpoint=job.endpoint,
                params=job.params,
                fmt=job.fmt,
                priority=job.priority,
                budget=job.budget,
                out=None if job.out is None else job.out.resolve(),
                skip_invalid=job.skip_invalid,
                rejected=view.rejected,
                dry_run=job.dry_run,
                shapes=job.quote,
                watch=view,
                catalog=settings.catalog,
            )
    except CancelledBatch:
        fail(f"batch {job.name} was cancelled: submit the file under another --name")
    except BadLines as exc:
        _print_errors(exc.scan)
        fail(
            f"nothing enqueued: {exc.scan.error_count:,} of {exc.scan.lines:,} lines are invalid "
            f"(--skip-invalid enqueues the rest and writes them to {view.rejected_path})"
        )
    except NoLines as exc:
        _print_errors(exc.scan)  # with --skip-invalid: every line is bad
        fail(str(exc))
    except (FileRefused, OSError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        if not view.adding_lines:
            raise
        _warn(
            f"fluxq: interrupted: some lines of batch {job.name} were added; the same command "
            "again adds only the rest"
        )
        raise typer.Exit(code=130) from None


# --- status ----------------------------------------------------------------------------------


def _one_line(status: BatchStatus) -> str:
    counts = status.counts
    text = (
        f"batch {status.batch}: {counts[State.DONE.value]:,} done, "
        f"{counts[State.FAILED.value]:,} failed, {counts[State.CANCELLED.value]:,} cancelled, "
        f"{status.waiting:,} waiting of {status.total:,}; spent {credits_text(status.spent)}"
    )
    if status.budget is not None:
        text += f" of budget {credits_text(status.budget)}"
    if status.paused:
        text += f"; paused: {status.paused}"
    return text


def _render(
    status: BatchStatus, notes: Sequence[str] = (), slots: KeySlots | None = None
) -> RenderableType:
    """The live view: a bar, the status with the key's slots, and the wait's findings (which
    say why it is blocked, if it is)."""
    ended = status.total - status.waiting
    bar = ProgressBar(total=max(status.total, 1), completed=ended, width=50)
    head = Table.grid(padding=(0, 1))
    head.add_row(bar, Text(f"{ended:,} of {status.total:,} lines ended"))
    view = None if slots is None else KeyView(slots, None)
    lines = [*status_lines(status, view), *(f"  {n}" for n in notes)]
    return Group(head, Text("\n".join(lines)))


class _Watched:
    """The last status a watch read, and whether Ctrl-C ended the watch."""

    def __init__(self, status: BatchStatus) -> None:
        self.status = status
        self.interrupted = False


WaitsFor = Callable[[Callable[[str], None]], WaitWatch]
"""Makes the ``WaitWatch`` of a watch (why it is not moving), given how to say a finding."""


def _watch(
    store: JobStore, name: str, interval: float, *, as_json: bool, waits: WaitsFor | None = None
) -> _Watched:
    """Refresh until the batch is finished, Ctrl-C, or the WaitWatch gave up."""
    watched = _Watched(_status_or_exit(store, name))
    # Progress lines go to stderr when stdout is for the final JSON.
    say = _warn if as_json else _say
    wait: WaitWatch | None = None
    try:
        if console.is_terminal:
            wait = None if waits is None else waits(lambda _text: None)  # shown in the view
            _watch_live(store, name, interval, watched, wait)
        else:
            wait = None if waits is None else waits(say)
            _watch_quietly(store, name, interval, watched, say, wait)
    except KeyboardInterrupt:
        watched.interrupted = True
    finally:
        if wait is not None:
            wait.close()
    return watched


def _going_on(watched: _Watched, wait: WaitWatch | None) -> bool:
    return not watched.status.finished and not (wait is not None and wait.gave_up)


def _watch_live(
    store: JobStore, name: str, interval: float, watched: _Watched, wait: WaitWatch | None
) -> None:
    notes = wait.check() if wait is not None else []
    view = _render(watched.status, notes, wait.slots if wait is not None else None)
    with Live(view, console=console, auto_refresh=False, transient=True) as live:
        while _going_on(watched, wait):
            time.sleep(interval)
            watched.status = _status_or_exit(store, name)
            notes = wait.check() if wait is not None else []
            slots = wait.slots if wait is not None else None
            live.update(_render(watched.status, notes, slots), refresh=True)


def _watch_quietly(
    store: JobStore,
    name: str,
    interval: float,
    watched: _Watched,
    say: Callable[[str], None],
    wait: WaitWatch | None,
) -> None:
    """Without a terminal (a log file, a pipe): a line when counts change, now and then."""
    say(_one_line(watched.status))
    shown, shown_at = watched.status.counts, time.monotonic()
    while _going_on(watched, wait):
        if wait is not None:
            wait.check()
        time.sleep(interval)
        watched.status = status = _status_or_exit(store, name)
        if status.counts != shown and time.monotonic() - shown_at >= QUIET_WATCH_EVERY_S:
            say(_one_line(status))
            shown, shown_at = status.counts, time.monotonic()
    if watched.status.counts != shown:
        say(_one_line(watched.status))


@batch_app.command("status")
def status_command(
    name: str = typer.Argument(..., help="The batch."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until the batch is finished."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    interval: float = typer.Option(1.0, "--interval", help="--watch: seconds between refreshes."),
) -> None:
    """A batch's lines by state, speed, ETA, credits, failures, and its key's slots: at BFL,
    held for doubtful POSTs, and why the batch is blocked if it is (exit 1 when some failed)."""
    if not interval > 0:
        fail(f"--interval {interval:g}: must be above 0 seconds")
    settings = settings_or_exit()
    if watch:  # the watch pings the workers through Celery: it needs the URL
        settings = with_redis_or_exit(settings)
    store = store_or_exit(settings)  # counters only: no Celery, a fast start
    status = _status_or_exit(store, name)
    watched = None
    if watch:

        def waits(say: Callable[[str], None]) -> WaitWatch:
            return WaitWatch(settings, store.redis, say=say, batch=name)

        watched = _watch(store, name, interval, as_json=as_json, waits=waits)
    if watched is not None:
        status = watched.status
    view = read_batch_view(store.redis, settings, status, now_s=time.time())
    if as_json:
        typer.echo(json.dumps(status_json(status, view)))
    else:
        for line in status_lines(status, view):
            _say_plain(line)
    if watched is not None and not watched.interrupted:
        failed = status.counts.get(State.FAILED.value, 0)
        raise typer.Exit(code=1 if failed else 0)


# --- list, cancel, retry, resume -------------------------------------------------------------


@batch_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="A JSON array.")) -> None:
    """Every batch, oldest first: lines, done, failed, waiting, credits spent, paused."""
    settings = settings_or_exit()
    store = store_or_exit(settings)
    now = time.time()
    found = (read_batch_status(store, batch, now_s=now) for batch in store.batches())
    statuses = [status for status in found if status is not None]
    if as_json:
        typer.echo(json.dumps([status_json(status) for status in statuses]))
        return
    if not statuses:
        _say("no batches yet (`fluxq batch submit FILE --name N` makes one)")
        return
    table = Table("batch", "total", "done", "failed", "waiting", "spent", "paused")
    for s in statuses:
        table.add_row(
            Text(s.batch),
            f"{s.total:,}",
            f"{s.counts[State.DONE.value]:,}",
            f"{s.counts[State.FAILED.value]:,}",
            f"{s.waiting:,}",
            credits_text(s.spent),
            Text(s.paused or ""),
        )
    console.print(table)


@batch_app.command("cancel")
def cancel_command(name: str = typer.Argument(..., help="The batch.")) -> None:
    """Cancel every waiting line and queued job of a batch; jobs already sent finish."""
    from fluxq.tasks.batches import cancel_batch  # lazy: the pipeline loads only when acting

    settings = settings_or_exit()
    with _runtime(settings) as rt:
        _status_or_exit(rt.store, name)
        result = cancel_batch(rt, name)
    _say(
        f"cancelled {result.lines:,} waiting lines and {result.jobs:,} queued jobs; "
        "jobs already sent finish and are saved"
    )


@batch_app.command("forget")
def forget_command(
    name: str = typer.Argument(..., help="The batch."),
    yes: bool = typer.Option(
        False, "--yes", help="Confirm: a later re-run of its file pays again."
    ),
) -> None:
    """Drop a finished batch's names and counters from Redis (its files stay where they are)."""
    from fluxq.tasks.batches import (  # lazy: the pipeline loads only when acting
        BatchBusy,
        forget_batch,
    )

    if not yes:
        fail(
            f"forget {name}: its names go too, so once its job records expire (FLUXQ_JOB_TTL_S) "
            "submitting the same file again runs and pays for every line again; add --yes"
        )
    settings = settings_or_exit()
    with _runtime(settings) as rt:
        _status_or_exit(rt.store, name)
        try:
            names = forget_batch(rt, name)
        except BatchBusy as exc:
            fail(f"{exc}: wait for it to finish or `fluxq batch cancel {name}` first")
    _say(f"forgot batch {name}: {names:,} names and its counters; its files are untouched")


@batch_app.command("retry")
def retry_command(
    name: str = typer.Argument(..., help="The batch."),
    failed: bool = typer.Option(
        True, "--failed/--no-failed", help="Retry jobs BFL or fluxq failed (moderation, errors)."
    ),
    uncertain: bool = typer.Option(
        False, "--uncertain", help="Retry jobs whose submit got no answer: each may be paid twice."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Only failures whose reason contains this text."
    ),
) -> None:
    """Run the failed jobs of a batch again (in its lanes, so its budget applies)."""
    from fluxq.tasks.batches import retry_batch  # lazy: the pipeline loads only when acting

    if not (failed or uncertain):
        fail("nothing to retry: --no-failed without --uncertain chooses no job")
    settings = settings_or_exit()
    with _runtime(settings) as rt:
        _status_or_exit(rt.store, name)
        if uncertain:
            _warn(
                "warning: --uncertain retries jobs whose submit got no answer: BFL may have "
                "billed them already, so each may be paid twice"
            )
        count = retry_batch(rt, name, failed=failed, uncertain=uncertain, reason=reason)
        status = _status_or_exit(rt.store, name)
    kinds = " and ".join(k for k, on in (("failed", failed), ("uncertain", uncertain)) if on)
    narrowed = f" with a reason containing {reason!r}" if reason else ""
    _say(f"retrying {count:,} {kinds} jobs{narrowed} of batch {name}")
    if status.paused == "cancelled":
        _say(f"batch {name} is cancelled: its retried lines wait until it is resumed")


@batch_app.command("resume")
def resume_command(
    name: str = typer.Argument(..., help="The batch."),
    budget: float | None = typer.Option(
        None, "--budget", help="Credits to add to the batch's budget first."
    ),
) -> None:
    """Resume a batch paused by its budget, adding credits to it."""
    from fluxq.tasks.batches import resume_batch  # lazy: the pipeline loads only when acting

    if budget is not None and not budget > 0:
        fail(f"--budget {budget:g}: must be a number of credits above 0 (it is added)")
    settings = settings_or_exit()
    with _runtime(settings) as rt:
        before = _status_or_exit(rt.store, name)
        if before.paused == "cancelled":
            fail(f"batch {name} was cancelled; it cannot be resumed (submit under a new --name)")
        resume_batch(rt, name, more_budget=budget)
        after = _status_or_exit(rt.store, name)
    _say(_one_line(after))
    if after.paused == "budget":
        _warn(
            f"still paused: the next line would pass the budget; "
            f"`fluxq batch resume {name} --budget MORE`"
        )


# --- report ----------------------------------------------------------------------------------


def _write_rows(rows: Iterator[ReportRow], out: TextIO, as_csv: bool) -> int:
    from fluxq.tasks.batches import ReportRow  # lazy: the pipeline loads only when acting

    count = 0
    if as_csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(ReportRow.FIELDS)
        for row in rows:
            writer.writerow([getattr(row, field) for field in ReportRow.FIELDS])
            count += 1
        return count
    for row in rows:
        record = {field: getattr(row, field) for field in ReportRow.FIELDS}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


@batch_app.command("report")
def report_command(
    name: str = typer.Argument(..., help="The batch."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV with a header (default: JSONL)."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file (default: stdout)."),
) -> None:
    """One row per line of the batch: its job, state, file, seed, cost and failure reason."""
    from fluxq.tasks.batches import report_rows  # lazy: the pipeline loads only when acting

    settings = settings_or_exit()
    with _runtime(settings) as rt:
        _status_or_exit(rt.store, name)
        rows = report_rows(rt, name)
        if out is None:
            _report_to_stdout(rows, as_csv)
            return
        try:
            with out.open("w", encoding="utf-8", newline="") as file:
                count = _write_rows(rows, file, as_csv)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}")
    _warn(f"wrote {count:,} rows to {out}")


def _report_to_stdout(rows: Iterator[ReportRow], as_csv: bool) -> None:
    try:
        _write_rows(rows, sys.stdout, as_csv)
        sys.stdout.flush()
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        _quiet_stdout()
        raise typer.Exit(code=0) from None


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the exit's flush does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def register(app: typer.Typer) -> None:
    app.add_typer(batch_app, name="batch")
