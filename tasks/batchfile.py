"""Batch files: stream a JSONL or CSV file of requests into checked, compact spool lines.

``fluxq batch submit FILE`` may be handed a million prompts for one night. Every line is checked
before any job exists (a bad line found at 3 a.m. is too late), in one streaming pass of constant
memory; each valid line becomes one tab-separated entry line of a spool file, which another pass
streams into Redis. Duplicate ids and file names are found after the pass from 64-bit hashes, so
memory stays bounded (a second pass runs only when there are duplicates).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TextIO, Union, get_args, get_origin

from pydantic import BaseModel

from fluxq.config.catalog import (
    CATALOG,
    NOT_UTF8,
    RESERVED_FIELD_TEXT,
    Catalog,
    estimate_credits,
    get_endpoint,
    not_utf8_at,
    request_to_json,
    reserved_fields_in,
    validate_request,
)
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.redact import redact
from fluxq.config.requests import RESERVED_FIELDS
from fluxq.workers.files import (
    ID_HINT,
    ID_PATTERN,
    NAME_HINT,
    NAME_PATTERN,
    SECRET_FIELDS,
    safe_name,
)

FORMATS = ("jsonl", "csv")
MAX_LINE_ID_CHARS = 60
"""The longest id a line may give: its job id is ``<batch>.<id>``, and a batch name has at most
64 characters (``fluxq.batch_submit.MAX_BATCH_CHARS``, which checks that the two fit)."""
MAX_REPORTED_ERRORS = 20
MAX_REJECTED_TEXT_CHARS = 2000
PROGRESS_EVERY_LINES = 10_000
LINE_FIELDS = ("id", "name", "endpoint")
"""A line's own fields besides its request's: taken out before the request is validated."""

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
_READ_BUFFER_BYTES = 1 << 20
MAX_LINE_BYTES = 64 << 20
"""The longest JSONL line read (a request with base64 input images fits well within it); a
longer one is a bad line, and memory stays bounded whatever the file holds."""
_BOM = b"\xef\xbb\xbf"
_BUCKETS = 16
"""Hash buckets (a power of two): after the pass one bucket at a time becomes a set, not all."""
_FIRST = 0xFFFF_FFFF
"""The mark of the first of several lines sharing a hash (see ``_bucket_marks``)."""
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_SIGNED_BY_FLUXQ = (
    "secrets are never stored in jobs; fluxq signs its own webhooks (FLUXQ_WEBHOOK_SECRET)"
)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Gives the text of ``json.dumps(x, separators=(",", ":"), ensure_ascii=False)`` without
building an encoder per line."""


def _refuse_constant(name: str) -> object:
    # Python's json reads NaN and Infinity, which are not JSON: pydantic would send them as null.
    raise ValueError(f"not JSON: {name} is not a number JSON knows")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


@dataclass(frozen=True)
class LineError:
    """One problem of one line: ``field`` is a dotted request field, or id, name, endpoint,
    json or line."""

    line: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One valid line, as the spool holds it: all that enqueueing its job needs."""

    line: int
    line_id: str
    name: str
    endpoint: str
    credits: float
    request_json: str

    def encode(self) -> str:
        """The spool line without its newline; the first four fields never hold a tab or newline
        (ids, names and endpoints are patterned; JSON escapes control characters)."""
        return (
            f"{self.line_id}\t{self.name}\t{self.endpoint}\t{self.credits!r}\t{self.request_json}"
        )

    @classmethod
    def decode(cls, text: str, line: int = 0) -> Entry:
        """The Entry of a spool line (a trailing newline is ignored); ``line`` is not stored."""
        parts = text.rstrip("\n").split("\t", 4)
        if len(parts) != 5:
            raise ValueError(f"not a spool entry: {text[:80]!r}")
        line_id, name, endpoint, credits, request_json = parts
        return cls(line, line_id, name, endpoint, float(credits), request_json)


@dataclass
class Scan:
    """What a scan found: counts, the first errors, and the price of the valid lines."""

    path: Path
    format: str
    lines: int
    valid: int
    error_count: int
    errors: list[LineError]
    credits: float
    by_endpoint: dict[str, int]
    duplicates: int


_Record = tuple[int, str | list[str], dict[str, Any] | LineError]
"""(line number, the line's text or CSV cells, its fields or the reason it has none)."""


def detect_format(path: Path, given: str | None) -> str:
    """The file's format: ``given`` (--format) when there is one, else told by the suffix."""
    choices = " or ".join(FORMATS)
    if given is not None:
        if given.lower() in FORMATS:
            return given.lower()
        raise ValueError(f"unknown format {given!r}: use {choices}")
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        suffixes = ", ".join(_SUFFIX_FORMATS)
        raise ValueError(
            f"cannot tell the format of {path.name} from its suffix (known: {suffixes}); "
            f"give --format {choices}"
        )
    return found


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``--param key=value`` options as a dict; scan_file types each value per endpoint."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not _is_utf8(pair):
            raise ValueError(f"--param {pair!r} is not UTF-8 text")
        if not sep or not key:
            raise ValueError(f"--param {pair!r} is not key=value (such as width=1024)")
        if key in params:
            raise ValueError(f"--param {key} is given twice")
        params[key] = value
    return params


# --- Cells: CSV cells and --param values typed by the request field they fill -----------------


def _to_int(cell: str) -> int:
    try:
        return int(cell)
    except ValueError:
        raise ValueError(f"{cell!r} is not a whole number") from None


def _to_float(cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{cell!r} is not a number")
    return value


def _to_bool(cell: str) -> bool:
    try:
        return _BOOLEANS[cell.strip().lower()]
    except KeyError:
        raise ValueError(f"{cell!r} is not true or false (true/false, yes/no, 1/0)") from None


_CONVERTERS: Mapping[object, Callable[[str], object]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
}


def _converter(annotation: Any) -> Callable[[str], object]:
    """How a cell becomes a field's value: int, float and bool parsed; the rest (str, enums,
    literals, unions of several types) left as text for pydantic to check. A number or a word
    (flux-3-video's ``duration``: ``auto`` or 5-20) is the number when the cell is one."""
    if get_origin(annotation) is Annotated:
        return _converter(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not NoneType]
        if len(kinds) == 1:
            return _converter(kinds[0])
        others = [kind for kind in kinds if get_origin(kind) is not Literal]
        if len(others) == 1 and (convert := _converter(others[0])) is not str:
            return _or_text(convert)
        return str
    return _CONVERTERS.get(annotation, str)


def _or_text(convert: Callable[[str], object]) -> Callable[[str], object]:
    """``convert``, or the cell as text when it does not convert (a literal word)."""

    def converted(cell: str) -> object:
        try:
            return convert(cell)
        except ValueError:
            return cell

    return converted


def _typed(
    cells: Mapping[str, str], converters: Mapping[str, Callable[[str], object]]
) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """The non-empty cells typed, and (field, reason) for each that does not convert; a cell of
    no field stays text, for pydantic to refuse by name."""
    typed: dict[str, object] = {}
    problems: list[tuple[str, str]] = []
    for key, cell in cells.items():
        if cell == "":
            continue
        convert = converters.get(key, str)
        try:
            typed[key] = convert(cell)
        except ValueError as exc:
            problems.append((key, str(exc)))
    return typed, problems


@dataclass(frozen=True)
class _Target:
    """One endpoint as lines use it: how its fields' cells convert, and the typed --param values
    (or why some do not convert). An open endpoint takes any field: its cells stay text."""

    endpoint: str
    fields: frozenset[str]
    open: bool
    converters: Mapping[str, Callable[[str], object]]
    params: dict[str, object]
    param_errors: tuple[tuple[str, str], ...]

    def unknown(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that are none of its request fields."""
        return [] if self.open else [name for name in names if name not in self.fields]


def _target(catalog: Catalog, endpoint: str, params: Mapping[str, str]) -> _Target:
    spec = catalog[endpoint]
    fields = spec.request_model.model_fields
    converters = {name: _converter(info.annotation) for name, info in fields.items()}
    typed, problems = _typed(params, converters)
    return _Target(endpoint, frozenset(fields), spec.open, converters, typed, tuple(problems))


def _all_fields(catalog: Catalog) -> frozenset[str]:
    """The request fields of the endpoints whose fields fluxq knows: what a column or --param may
    be when no one endpoint is given (an open endpoint's own need it as the --endpoint)."""
    specs = [spec for spec in catalog.values() if not spec.open]
    return frozenset(name for spec in specs for name in spec.request_model.model_fields)


def _unknown_endpoint(catalog: Catalog, endpoint: str) -> str:
    try:
        get_endpoint(endpoint, catalog=catalog)
    except InvalidRequest as exc:
        return exc.errors[0].msg
    raise AssertionError(f"{endpoint} is in the catalog")


# --- One line: its own fields, its request, its Entry -----------------------------------------


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true or false"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


def _own_text(line: int, data: dict[str, Any], key: str, errors: list[LineError]) -> str | None:
    """A line's id, name or endpoint taken out of its fields; a whole number is taken as text
    (``7.0`` is 7, as JSON reads it)."""
    value = data.pop(key, None)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    errors.append(LineError(line, key, f"must be a string, not {_json_type(value)}"))
    return None


def _own_fields(
    line: int, data: dict[str, Any], errors: list[LineError]
) -> tuple[str | None, str | None, str | None]:
    """The line's (id, name, endpoint), each None when not given; bad ids and names recorded."""
    given_id = _own_text(line, data, "id", errors)
    if given_id is not None:
        if len(given_id) > MAX_LINE_ID_CHARS:
            reason = f"must be at most {MAX_LINE_ID_CHARS} characters (a job id is <batch>.<id>)"
            errors.append(LineError(line, "id", reason))
        elif not ID_PATTERN.fullmatch(given_id):
            errors.append(LineError(line, "id", ID_HINT))
    name = _own_text(line, data, "name", errors)
    if name is not None and not NAME_PATTERN.fullmatch(name):
        errors.append(LineError(line, "name", NAME_HINT))
    return given_id, name, _own_text(line, data, "endpoint", errors)


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _digest_id(endpoint: str, request_json: str) -> str:
    """The id of a line without one: the same request on the same endpoint always gets the same
    id, so a resubmitted file finds its jobs instead of paying for them again."""
    return hashlib.sha256(f"{endpoint}\n{request_json}".encode()).hexdigest()[:16]


class _Checker:
    """Turns one line's fields into its Entry or its LineErrors, the same way every time."""

    def __init__(self, endpoint: str | None, params: Mapping[str, str], catalog: Catalog) -> None:
        self.default = endpoint
        self._params = dict(params)
        self._catalog = catalog
        self._targets: dict[str, _Target] = {}
        self._check_params()

    def target(self, endpoint: str) -> _Target | None:
        """What ``endpoint``'s lines need, made once; None for an unknown endpoint."""
        target = self._targets.get(endpoint)
        if target is None and endpoint in self._catalog:
            target = self._targets[endpoint] = _target(self._catalog, endpoint, self._params)
        return target

    def _default_target(self) -> _Target | None:
        if self.default is None:
            return None
        target = self.target(self.default)
        if target is None:
            raise ValueError(_unknown_endpoint(self._catalog, self.default))
        return target

    def _check_params(self) -> None:
        """Refuse upfront a --param no line could use, checked against the default endpoint (or
        every endpoint, without one): a typo would otherwise fail every line."""
        target = self._default_target()
        for key in self._params:
            if key in LINE_FIELDS or key in SECRET_FIELDS:
                raise ValueError(f"--param {key} is not allowed: give {key} per line")
            if target is not None and target.open and key in RESERVED_FIELDS:
                raise ValueError(f"--param {key} is not allowed: {RESERVED_FIELD_TEXT}")
        known = target.fields if target is not None else _all_fields(self._catalog)
        unknown = sorted(target.unknown(self._params) if target else set(self._params) - known)
        if unknown:
            where = f"{self.default}'s" if self.default is not None else "any endpoint's"
            raise ValueError(
                f"--param {', '.join(unknown)}: not {where} request field; known: "
                + ", ".join(sorted(known - set(SECRET_FIELDS)))
            )
        if target is not None and target.param_errors:
            key, reason = target.param_errors[0]
            raise ValueError(f"--param {key}: {reason}")

    def columns(self, path: Path, header: list[str]) -> list[str]:
        """The CSV header's column names; ValueError for a column no line could use."""
        names = [name.strip() for name in header]
        shown = ", ".join(names)
        if "prompt" not in names:
            raise ValueError(f"{path} has no prompt column; its header is: {shown}")
        if "" in names or len(set(names)) < len(names):
            raise ValueError(f"{path}: every column needs its own name; the header is: {shown}")
        secrets = sorted(set(names) & set(SECRET_FIELDS))
        if secrets:
            raise ValueError(f"{path}: column {secrets[0]} is refused: {_SIGNED_BY_FLUXQ}")
        target = None if "endpoint" in names else self._default_target()
        if target is not None:
            known, where = target.fields, target.endpoint
            unknown = target.unknown(name for name in names if name not in LINE_FIELDS)
        elif "endpoint" in names:
            known, where = _all_fields(self._catalog), "any endpoint"
            unknown = [name for name in names if name not in known and name not in LINE_FIELDS]
        else:
            raise ValueError(f"{path}: no endpoint; pass --endpoint or add an endpoint column")
        if unknown:
            fields = ", ".join([*LINE_FIELDS, *sorted(known - set(SECRET_FIELDS))])
            raise ValueError(
                f"{path}: column {', '.join(unknown)} is no request field of {where}; "
                f"known: {fields}"
            )
        return names

    def check(self, line: int, data: dict[str, Any], cells: bool) -> Entry | list[LineError]:
        """The line's Entry, or every problem it has; ``cells`` says its values are CSV text."""
        errors: list[LineError] = []
        given_id, given_name, endpoint = _own_fields(line, data, errors)
        if endpoint is None:
            endpoint = self.default
        model = self._request(line, endpoint, data, cells, errors)
        if model is None or endpoint is None:
            return errors
        body = request_to_json(model)
        request_json = _ENCODER.encode(body)
        # The spool holds what BFL is sent, as UTF-8: its text is checked once, and only a line
        # that fails is walked to name the field (a lone surrogate, from a "\ud800" escape).
        if not request_json.isascii() and not _is_utf8(request_json):
            error = FieldError(("body", *(not_utf8_at(body) or ())), NOT_UTF8)
            errors.append(LineError(line, error.field, error.msg))
        if errors:
            return errors
        line_id = given_id if given_id is not None else _digest_id(endpoint, request_json)
        # An id fullmatches ID_PATTERN, which is exactly what safe_name keeps as it is.
        name = line_id if given_name is None else safe_name(given_name)
        credits = estimate_credits(endpoint, model, catalog=self._catalog)
        return Entry(line, line_id, name, endpoint, credits, request_json)

    def _request(
        self,
        line: int,
        endpoint: str | None,
        data: dict[str, Any],
        cells: bool,
        errors: list[LineError],
    ) -> BaseModel | None:
        """The validated request, or None with every reason recorded."""
        secrets = [key for key in SECRET_FIELDS if data.get(key) is not None]
        errors.extend(LineError(line, key, _SIGNED_BY_FLUXQ) for key in secrets)
        if endpoint is None:
            reason = "no endpoint: give the line one or pass --endpoint"
            errors.append(LineError(line, "endpoint", reason))
            return None
        target = self.target(endpoint)
        if target is None:
            errors.append(LineError(line, "endpoint", _unknown_endpoint(self._catalog, endpoint)))
            return None
        reserved = reserved_fields_in(self._catalog[endpoint], data)
        errors.extend(
            LineError(line, key, RESERVED_FIELD_TEXT) for key in reserved if key not in secrets
        )
        if target.param_errors:
            errors.extend(LineError(line, key, reason) for key, reason in target.param_errors)
        if cells:
            data, problems = _typed(data, target.converters)
            errors.extend(LineError(line, key, reason) for key, reason in problems)
        if target.params:
            data = {**target.params, **data}
        try:
            return validate_request(endpoint, data, catalog=self._catalog)
        except InvalidRequest as exc:
            errors.extend(LineError(line, e.field, e.msg) for e in exc.errors)
            return None


# --- Reading: lines of a JSONL file, rows of a CSV file ---------------------------------------


def _not_json(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON: {exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "not JSON we read: nested too deeply"
    return str(exc)


def _bounded_lines(file: Iterable[bytes]) -> Iterator[bytes | None]:
    """The file's lines, each read at most MAX_LINE_BYTES at a time: a longer line (a file with
    no newlines, say) is skipped to its end and given as None, never held in memory whole."""
    read = getattr(file, "readline", None)
    if read is None:  # a plain iterable of lines (tests)
        for raw in file:
            yield raw if len(raw) <= MAX_LINE_BYTES else None
        return
    while True:
        raw = read(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):  # drop the rest of the line, chunk by chunk
            raw = read(_READ_BUFFER_BYTES)
        yield None


def _jsonl_lines(file: Iterable[bytes]) -> Iterator[tuple[int, str, int]]:
    """(line number, text, position of its first byte that is not UTF-8 or 0) of each line that
    is not blank; a line over MAX_LINE_BYTES has text "" and position -1."""
    for number, raw in enumerate(_bounded_lines(file), 1):
        if raw is None:
            yield number, "", -1
            continue
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            yield number, raw.decode(errors="replace"), exc.start + 1
            continue
        if not text.isspace():
            yield number, text, 0


def _jsonl_records(file: Iterable[bytes]) -> Iterator[_Record]:
    for number, text, bad_byte in _jsonl_lines(file):
        if bad_byte < 0:
            reason = f"longer than {MAX_LINE_BYTES // 2**20} MiB: not read"
            yield number, text, LineError(number, "line", reason)
            continue
        if bad_byte:
            reason = f"not UTF-8 (byte {bad_byte} of the line)"
            yield number, text, LineError(number, "line", reason)
            continue
        try:
            data = _DECODER.decode(text)
        except (ValueError, RecursionError) as exc:
            yield number, text, LineError(number, "json", _not_json(exc))
            continue
        if isinstance(data, dict):
            yield number, text, data
        else:
            reason = f"must be a JSON object, not {_json_type(data)}"
            yield number, text, LineError(number, "line", reason)


class _Lines:
    """Physical lines decoded for the csv reader, remembering the last one that was not UTF-8
    (a bad byte becomes an error of its row, not of the file) and the last one read."""

    def __init__(self, file: Iterable[bytes]) -> None:
        self.file = file
        self.last_bad = 0
        self.last = ""

    def __iter__(self) -> Iterator[str]:
        for number, raw in enumerate(self.file, 1):
            try:
                self.last = raw.decode()
            except UnicodeDecodeError:
                self.last_bad = number
                self.last = raw.decode(errors="replace")
            yield self.last


def _csv_records(path: Path, file: Iterable[bytes], checker: _Checker) -> Iterator[_Record]:
    lines = _Lines(file)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise ValueError(f"{path} has no CSV header row (such as: prompt,width,height)") from None
    if lines.last_bad:
        raise ValueError(f"{path}: its header row is not UTF-8")
    columns = checker.columns(path, header)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, lines.last, LineError(start, "line", f"not CSV: {exc}")
            continue
        if not any(row):
            continue
        if lines.last_bad >= start:
            yield start, row, LineError(start, "line", "not UTF-8")
        elif len(row) != len(columns):
            reason = f"has {len(row)} cells; the header has {len(columns)}"
            yield start, row, LineError(start, "line", reason)
        else:
            yield start, row, {key: cell for key, cell in zip(columns, row, strict=True) if cell}


@contextmanager
def _opened(path: Path) -> Iterator[Iterable[bytes]]:
    """The file, read in large blocks, past a UTF-8 byte order mark if it starts with one."""
    try:
        file = io.BufferedReader(io.FileIO(path), buffer_size=_READ_BUFFER_BYTES)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    with file:
        if file.peek(len(_BOM)).startswith(_BOM):
            file.read(len(_BOM))
        yield file


def _records(path: Path, fmt: str, checker: _Checker) -> Iterator[_Record]:
    with _opened(path) as file:
        if fmt == "jsonl":
            yield from _jsonl_records(file)
        else:
            yield from _csv_records(path, file, checker)


def _sources(path: Path, fmt: str, checker: _Checker) -> Iterator[tuple[int, str | list[str]]]:
    """(line number, text or cells) of the same lines as ``_records``, JSON left unparsed."""
    if fmt == "csv":
        for line, source, _ in _records(path, fmt, checker):
            yield line, source
        return
    with _opened(path) as file:
        for line, text, _ in _jsonl_lines(file):
            yield line, text


def _source_text(source: str | list[str], secrets: Sequence[str] = ()) -> str:
    """A bad line's text for the rejected file: cut, and any secret it holds redacted."""
    if isinstance(source, list):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(source)
        source = buffer.getvalue()
    return redact(source.rstrip("\r\n"), secrets, max_chars=MAX_REJECTED_TEXT_CHARS)


def _rejected_line(line: int, errors: Sequence[LineError], text: str) -> str:
    problems = [{"field": e.field, "reason": e.reason} for e in errors]
    record = {"line": line, "errors": problems, "text": text}
    return json.dumps(record, ensure_ascii=False) + "\n"


# --- Duplicates: 64-bit hashes per bucket, marked after the pass ------------------------------


def _bucket_marks(hashes: array[int]) -> array[int] | None:
    """None when no hash repeats; else, per hash in file order, 0 when it is unique, _FIRST for
    the first of a repeated hash, and 1 + the first's index for each later one."""
    if len(set(hashes)) == len(hashes):
        return None
    marks = array("I", bytes(4 * len(hashes)))
    order = sorted(range(len(hashes)), key=hashes.__getitem__)  # stable: equal hashes in order
    first = order[0]
    for previous, index in itertools.pairwise(order):
        if hashes[index] != hashes[previous]:
            first = index
            continue
        marks[first] = _FIRST
        marks[index] = first + 1
    return marks


class _Keys:
    """The hashes of each valid line's id and of its name (lower-cased, as file names compare).

    A set of a million ints takes ~60 MB; the hashes take 8 bytes each, bucketed so that after
    the pass one bucket at a time is checked. Two of a million 64-bit hashes match by chance
    about once in 30 million files.
    """

    def __init__(self) -> None:
        self.ids = [array("q") for _ in range(_BUCKETS)]
        self.names = [array("q") for _ in range(_BUCKETS)]

    def add(self, entry: Entry) -> None:
        key = hash(entry.line_id)
        self.ids[key % _BUCKETS].append(key)
        key = hash(entry.name.lower())
        self.names[key % _BUCKETS].append(key)

    def repeats(self) -> _Repeats | None:
        """Where hashes repeat (each bucket freed as it is checked); None when none does."""
        ids = [_bucket_marks(self.ids.pop(0)) for _ in range(_BUCKETS)]
        names = [_bucket_marks(self.names.pop(0)) for _ in range(_BUCKETS)]
        if all(marks is None for marks in (*ids, *names)):
            return None
        return _Repeats(ids, names)


class _Repeats:
    """Walks the valid lines again in order and tells which repeat an earlier one."""

    def __init__(self, ids: list[array[int] | None], names: list[array[int] | None]) -> None:
        self._marks = (ids, names)
        self._seen = ([0] * _BUCKETS, [0] * _BUCKETS)

    def _first(self, family: int, key: int, line: int) -> int:
        """The line this hash first appeared on when ``line`` repeats it, else 0."""
        bucket = key % _BUCKETS
        seen = self._seen[family]
        index = seen[bucket]
        seen[bucket] = index + 1
        marks = self._marks[family][bucket]
        if marks is None:
            return 0
        mark = marks[index]
        if mark == _FIRST:
            marks[index] = line  # later lines of this hash read the first's line number here
            return 0
        return marks[mark - 1] if mark else 0

    def errors(self, entry: Entry) -> list[LineError]:
        """Why ``entry`` repeats an earlier valid line, if it does."""
        id_first = self._first(0, hash(entry.line_id), entry.line)
        name_first = self._first(1, hash(entry.name.lower()), entry.line)
        errors = []
        if id_first:
            if entry.line_id == _digest_id(entry.endpoint, entry.request_json):
                reason = "the same endpoint and request (give each line an id to run it twice)"
            else:
                reason = f"the same id {entry.line_id!r}"
            errors.append(LineError(entry.line, "id", f"duplicates line {id_first}: {reason}"))
        # A name made from a repeated id repeats with it: one error says it all.
        if name_first and not (id_first and entry.name == entry.line_id):
            reason = f"the same file name {entry.name!r} (names ignore case)"
            errors.append(LineError(entry.line, "name", f"duplicates line {name_first}: {reason}"))
        return errors


# --- The scan ---------------------------------------------------------------------------------


class _Scanner:
    """The streaming pass, and the second one that only runs to drop duplicates."""

    def __init__(
        self,
        scan: Scan,
        checker: _Checker,
        spool: TextIO,
        rejected: TextIO | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.scan = scan
        self.checker = checker
        self.spool = spool
        self.rejected = rejected
        self.progress = progress
        self.keys = _Keys()
        self.invalid = array("I")

    def first_pass(self) -> None:
        scan, progress, cells = self.scan, self.progress, self.scan.format == "csv"
        check, write, add = self.checker.check, self.spool.write, self.keys.add
        by_endpoint = scan.by_endpoint
        for line, source, data in _records(scan.path, scan.format, self.checker):
            scan.lines += 1
            outcome = check(line, data, cells) if isinstance(data, dict) else [data]
            if isinstance(outcome, Entry):
                write(outcome.encode() + "\n")
                add(outcome)
                scan.valid += 1
                scan.credits += outcome.credits
                by_endpoint[outcome.endpoint] = by_endpoint.get(outcome.endpoint, 0) + 1
            else:
                self._reject(line, source, data, outcome)
            if progress is not None and scan.lines % PROGRESS_EVERY_LINES == 0:
                progress(scan.lines)
        if progress is not None:
            progress(scan.lines)

    def _reject(
        self,
        line: int,
        source: str | list[str],
        data: dict[str, Any] | LineError,
        errors: list[LineError],
    ) -> None:
        self.scan.error_count += 1
        self.scan.errors.extend(errors[: MAX_REPORTED_ERRORS - len(self.scan.errors)])
        self.invalid.append(line)
        if self.rejected is not None:
            values = [] if isinstance(data, LineError) else [data.get(k) for k in SECRET_FIELDS]
            secrets = [str(value) for value in values if value is not None]
            self.rejected.write(_rejected_line(line, errors, _source_text(source, secrets)))

    def drop_duplicates(self) -> None:
        """Rewrite the spool without the lines that repeat an earlier one, reporting those."""
        repeats = self.keys.repeats()
        if repeats is None:
            return
        with tempfile.TemporaryFile("w+", encoding="utf-8") as copy:
            self.spool.flush()
            self.spool.seek(0)
            shutil.copyfileobj(self.spool, copy)
            copy.seek(0)
            self.spool.seek(0)
            self.spool.truncate()
            self._second_pass(repeats, iter(copy))

    def _second_pass(self, repeats: _Repeats, rows: Iterator[str]) -> None:
        scan = self.scan
        invalid = iter(self.invalid)
        next_invalid = next(invalid, 0)
        errors: list[LineError] = []
        for line, source in _sources(scan.path, scan.format, self.checker):
            if line == next_invalid:
                next_invalid = next(invalid, 0)
                continue
            row = next(rows, None)
            if row is None:
                raise ValueError(f"{scan.path} changed while it was being scanned")
            entry = Entry.decode(row, line)
            found = repeats.errors(entry)
            if not found:
                self.spool.write(row)
                continue
            scan.valid -= 1
            scan.error_count += 1
            scan.duplicates += 1
            scan.credits -= entry.credits
            scan.by_endpoint[entry.endpoint] -= 1
            errors.extend(found[: MAX_REPORTED_ERRORS - len(errors)])
            if self.rejected is not None:
                self.rejected.write(_rejected_line(line, found, _source_text(source)))
        merged = sorted(scan.errors + errors, key=lambda error: error.line)
        scan.errors = merged[:MAX_REPORTED_ERRORS]
        scan.by_endpoint = {key: count for key, count in scan.by_endpoint.items() if count}


@contextmanager
def _spool_or_temporary(spool: TextIO | None) -> Iterator[TextIO]:
    """The caller's spool, left open; else a temporary one, as duplicates are found from it."""
    if spool is not None:
        yield spool
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8") as temporary:
        yield temporary


def scan_file(
    path: Path,
    *,
    endpoint: str | None,
    params: Mapping[str, str],
    fmt: str | None = None,
    spool: TextIO | None = None,
    rejected: TextIO | None = None,
    progress: Callable[[int], None] | None = None,
    catalog: Catalog = CATALOG,
) -> Scan:
    """Check every line of a JSONL or CSV batch file; write each valid one's Entry to ``spool``.

    ``endpoint`` is the endpoint of lines without one; ``params`` are defaults of request fields
    (typed like CSV cells), a line's own value wins. Every bad line is counted and written to
    ``rejected`` as JSON; a line repeating an earlier one's id or name is bad too. Duplicates
    are found after the pass, so ``spool`` must be a seekable file opened for reading and
    writing ("w+", utf-8): when there are any, it is rewritten without them, and they follow the
    other lines in ``rejected``. ``progress`` gets the count of data lines read every
    PROGRESS_EVERY_LINES lines and at the end. A problem with the file as a whole (unreadable,
    unknown format, endpoint or --param, a bad CSV header) is a ValueError saying so. Lines may
    name the endpoints of ``catalog`` (a process's ``Settings.catalog`` holds declared ones).
    """
    fmt = detect_format(path, fmt)
    checker = _Checker(endpoint, params, catalog)
    if spool is not None and not (spool.readable() and spool.seekable()):
        raise ValueError("the spool must be a seekable file opened for reading and writing")
    scan = Scan(path, fmt, 0, 0, 0, [], 0.0, {}, 0)
    with _spool_or_temporary(spool) as out:
        scanner = _Scanner(scan, checker, out, rejected, progress)
        scanner.first_pass()
        scanner.drop_duplicates()
        out.flush()
    scan.credits = round(scan.credits, 2)
    return scan
