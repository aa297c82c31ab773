"""One way a batch file goes in, for every way in: ``fluxq batch submit`` (and ``fluxq run``),
``fluxq.enqueue_many`` (``Client.enqueue_many``) and ``POST /v1/batches``.

``submit_file`` checks the batch's parameters (one set of limits: ``batch_problems``), refuses a
cancelled batch, checks every line of the file before any job exists
(``tasks.batchfile.scan_file``: one bad line and nothing is enqueued, the first bad lines named),
then streams the checked lines into the batch's lanes (``tasks.batches.enqueue_entries``): job ids
are ``<batch>.<line id>``, so sending the same file again adds each line once. A way in keeps only
its own I/O: the CLI its options and what it prints, the HTTP API its request's body and answer,
the Python API its values and exceptions.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from fluxq.config.catalog import (
    CATALOG,
    Catalog,
    PriceShape,
    get_endpoint,
    price_shape,
    validate_request,
)
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.tasks.batches import EnqueueResult, batch_status, enqueue_entries, set_output
from fluxq.tasks.batchfile import MAX_LINE_ID_CHARS, Entry, Scan, scan_file
from fluxq.workers.files import ID_HINT, ID_PATTERN, MAX_NAME_CHARS
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.batches import DEFAULT_BATCH_PRIORITY
from fluxq.workers.state.jobs import MAX_PRIORITY

MAX_BATCH_CHARS = 64
"""A batch name's longest form: a line's job id is ``<batch>.<line id>``, and with line ids of up
to MAX_LINE_ID_CHARS it stays within MAX_NAME_CHARS."""
assert MAX_BATCH_CHARS + 1 + MAX_LINE_ID_CHARS <= MAX_NAME_CHARS

BATCH_NAME_HINT = f"{ID_HINT}; at most {MAX_BATCH_CHARS} characters (a job id is <batch>.<line id>)"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a batch of lines; None when it can."""
    if ID_PATTERN.fullmatch(name) and len(name) <= MAX_BATCH_CHARS:
        return None
    return BATCH_NAME_HINT


def batch_problems(
    name: str,
    *,
    endpoint: str | None = None,
    priority: int = DEFAULT_BATCH_PRIORITY,
    budget: float | None = None,
    catalog: Catalog = CATALOG,
) -> list[FieldError]:
    """Every bad parameter of a batch, each named by its parameter (``("name",)``,
    ``("endpoint",)``, ``("priority",)``, ``("budget",)``), in that order. ``endpoint`` is one
    of ``catalog`` (a process's ``Settings.catalog`` holds the declared ones)."""
    problems: list[FieldError] = []
    if (problem := name_problem(name)) is not None:
        problems.append(FieldError(("name",), problem))
    if endpoint is not None:
        try:
            get_endpoint(endpoint, catalog=catalog)
        except InvalidRequest as exc:
            problems.extend(FieldError(("endpoint",), error.msg) for error in exc.errors)
    if not 0 <= priority <= MAX_PRIORITY:
        problems.append(FieldError(("priority",), f"must be 0..{MAX_PRIORITY}"))
    if budget is not None and not budget > 0:
        problems.append(FieldError(("budget",), "must be a number of credits above 0"))
    return problems


# --- refusals: each an InvalidRequest; nothing was enqueued ------------------------------------


class BadParameters(InvalidRequest):
    """Some parameters of the batch are bad: ``errors`` names each (``batch_problems``)."""

    def __init__(self, problems: list[FieldError]) -> None:
        super().__init__("invalid batch", errors=problems)


class CancelledBatch(InvalidRequest):
    """The batch was cancelled: lines added to it would never run."""

    def __init__(self, name: str) -> None:
        super().__init__(f"batch {name} was cancelled: submit the file under another name")
        self.name = name


class FileRefused(InvalidRequest):
    """The file as a whole cannot be read as a batch: unreadable, its format, a bad CSV header, a
    --param no request takes (``scan_file``'s ValueError, whose text this is)."""


class BadLines(InvalidRequest):
    """Some lines are bad: ``errors`` names the first (``loc`` ``(line, *field)``) and ``scan``
    counts them all."""

    def __init__(self, scan: Scan) -> None:
        self.scan = scan
        errors = [FieldError((e.line, *e.field.split(".")), e.reason) for e in scan.errors]
        super().__init__(
            f"{scan.error_count:,} of {scan.lines:,} lines are invalid; nothing enqueued",
            errors=errors,
        )


class NoLines(InvalidRequest):
    """The file has no valid line (empty, or every line bad and skipped)."""

    def __init__(self, scan: Scan) -> None:
        self.scan = scan
        super().__init__(f"nothing to enqueue: {scan.path} has no valid lines")


# --- submitting --------------------------------------------------------------------------------


class SubmitWatch(Protocol):
    """What a way in is told while ``submit_file`` runs (``fluxq batch submit``: its bars)."""

    def scanning(self, lines: int) -> None:
        """Data lines read so far: every PROGRESS_EVERY_LINES and at the end."""

    def checked(self, scan: Scan) -> None:
        """Every line is checked and the valid ones are about to go in (unless a dry run):
        the last moment to say so, or to stop (raise) with nothing enqueued."""

    def adding(self, seen: int) -> None:
        """Lines added to the lanes so far (after each chunk)."""


class _Unwatched:
    """A SubmitWatch told nothing."""

    def scanning(self, lines: int) -> None:
        pass

    def checked(self, scan: Scan) -> None:
        pass

    def adding(self, seen: int) -> None:
        pass


@dataclass(frozen=True)
class SubmitResult:
    """What ``submit_file`` did: the file's scan, and what adding its lines did (nothing on a
    dry run)."""

    batch: str
    scan: Scan
    enqueued: EnqueueResult = field(default_factory=EnqueueResult)
    dry_run: bool = False
    shapes: Counter[PriceShape] = field(default_factory=Counter)
    """A dry run asked for ``shapes``: the lines BFL's pricing endpoint can quote, per shape."""

    @property
    def lines(self) -> int:
        return self.scan.lines

    @property
    def added(self) -> int:
        return self.enqueued.added

    @property
    def present(self) -> int:
        return self.enqueued.present

    @property
    def conflicts(self) -> list[Entry]:
        return self.enqueued.conflicts


def submit_file(
    rt: Runtime | None,
    path: Path,
    *,
    name: str,
    endpoint: str | None = None,
    params: Mapping[str, str] | None = None,
    fmt: str | None = None,
    priority: int = DEFAULT_BATCH_PRIORITY,
    budget: float | None = None,
    out: Path | None = None,
    skip_invalid: bool = False,
    rejected: TextIO | None = None,
    dry_run: bool = False,
    shapes: bool = False,
    watch: SubmitWatch | None = None,
    catalog: Catalog | None = None,
) -> SubmitResult:
    """Check every line of a JSONL or CSV file, then enqueue them all as lines of batch ``name``.

    Raises, with nothing enqueued (each an InvalidRequest): BadParameters (``batch_problems``),
    CancelledBatch, FileRefused, BadLines (unless ``skip_invalid``: the bad lines are left out,
    and written to ``rejected`` as by ``scan_file``) and NoLines. ``endpoint`` is that of lines
    naming none, ``params`` request fields for every line (a line's own win), ``fmt`` jsonl or csv
    (default: told by the suffix); ``budget`` sets the batch's credits, ``out`` its directory
    (absolute, on the workers' machines). A dry run (or no ``rt``) checks and enqueues nothing;
    with ``shapes`` it also counts the lines per ``PriceShape``, for a quote.
    Lines may name the endpoints of ``catalog``, by default ``rt``'s settings' (fluxq's own
    without ``rt``: a dry run with no Redis passes its settings' catalog).
    """
    if catalog is None:
        catalog = CATALOG if rt is None else rt.settings.catalog
    problems = batch_problems(
        name, endpoint=endpoint, priority=priority, budget=budget, catalog=catalog
    )
    if problems:
        raise BadParameters(problems)
    existing = None if rt is None else batch_status(rt, name)
    if existing is not None and existing.paused == "cancelled":
        raise CancelledBatch(name)
    watch = watch if watch is not None else _Unwatched()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        try:
            scan = scan_file(
                path,
                endpoint=endpoint,
                params=params or {},
                fmt=fmt,
                spool=spool,
                rejected=rejected,
                progress=watch.scanning,
                catalog=catalog,
            )
        except ValueError as exc:
            raise FileRefused(str(exc)) from None
        if scan.error_count and not skip_invalid:
            raise BadLines(scan)
        if not scan.valid:
            raise NoLines(scan)
        watch.checked(scan)
        if dry_run or rt is None:
            spool.seek(0)
            found = price_shapes((Entry.decode(t) for t in spool), catalog) if shapes else Counter()
            return SubmitResult(name, scan, dry_run=True, shapes=found)
        set_output(rt, name, out)
        spool.seek(0)
        result = enqueue_entries(
            rt,
            name,
            (Entry.decode(text) for text in spool),
            priority=priority,
            budget=budget,
            progress=watch.adding,
        )
    return SubmitResult(name, scan, result)


def price_shapes(entries: Iterable[Entry], catalog: Catalog) -> Counter[PriceShape]:
    """How many of ``entries`` BFL would quote at each shape (lines of endpoints not priced per
    megapixel are left out: BFL's pricing endpoint quotes FLUX.2 only)."""
    found: Counter[PriceShape] = Counter()
    for entry in entries:
        request = validate_request(entry.endpoint, json.loads(entry.request_json), catalog=catalog)
        shape = price_shape(entry.endpoint, request, catalog=catalog)
        if shape is not None:
            found[shape] += 1
    return found
