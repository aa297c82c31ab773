"""``fluxq batch status NAME [--json]`` without typer, rich, pydantic, redis-py or Celery.

The command reads two hashes and the key's slots (``batch_view.slot_reads``) in one round trip,
then the jobs holding those slots (``batch_view.holder_reads``, at most the cap's few) in a second;
loading the full command line around it costs far more than the reads (a few hundred
milliseconds against a fraction of one). ``fluxq.cli.main`` asks ``run`` first:
it answers when the command and the environment are ones it can answer exactly as the typer
command would (the same bytes on stdout and stderr, the same exit code), and returns None, having
printed nothing, in every other case, so the normal command line runs instead.

It answers only when

* the arguments are exactly ``[--debug] batch status NAME [--json]`` (``--json`` anywhere after
  ``status``), NAME a plain batch name (letters, digits, ``. _ -``);
* FLUXQ_REDIS_URL is set (and no other spelling of it), passes the settings' own check
  (``config.redis_url``), and is ``redis://[user:password@]host[:port][/db]`` or
  ``unix://[:password@]/path[?db=N]`` with no other query option;
* the settings the key's slots depend on are unset or plainly spelled: BFL_API_KEY or
  FLUXQ_BFL_API_KEY (one of them, printable ASCII), FLUXQ_ACTIVE_CAP (an integer 1..1000) and
  FLUXQ_AIMD_INCREASE_INTERVAL_S (a plain decimal number, above 0 and at most 3600), each under
  that one spelling;
* no ``.env`` file is in the working directory (the settings would read it);
* FLUXQ_NO_FAST_PATH is unset, empty or ``0`` (set it to force the normal command line);
* everything went well up to the output: any failure to connect or read (Redis down, a wrong
  password, an error reply, a counter that is not a number) falls back, and the normal command
  reports it in its own words.

Replies are parsed by ``hiredis`` (redis-py's own C parser); the connection is a plain socket.

Known difference: the normal command loads every FLUXQ_* setting and refuses to run when any of
them is invalid; this path checks only the ones it reads.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote, urlsplit

from fluxq.cli.batch_view import (
    KeyView,
    batch_reason,
    holder_reads,
    key_slots_from,
    no_batch_message,
    slot_reads,
    status_json,
    status_lines,
    with_holders,
)
from fluxq.config.redis_url import check_redis_url
from fluxq.workers.state import keys
from fluxq.workers.state.batches import BatchStatus, status_from_records

if TYPE_CHECKING:
    from pydantic import SecretStr

USER_ERROR_EXIT = 2
"""The normal command line's exit code for a failure a user can fix (``common.USER_ERROR_EXIT``)."""

IO_TIMEOUT_S = 10.0
"""Connect and read timeout; past it the normal command line tries (and reports) instead."""

DEFAULT_PORT = 6379

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Names answered here: nothing typer would take for an option, nothing rich would change."""

_DB_QUERY = re.compile(r"db=([0-9]+)")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""Characters rich's print strips or expands (tabs, carriage returns, escapes)."""

REDIS_URL_ENV = "FLUXQ_REDIS_URL"
NO_FAST_PATH_ENV = "FLUXQ_NO_FAST_PATH"
API_KEY_ENVS = ("BFL_API_KEY", "FLUXQ_BFL_API_KEY")
ACTIVE_CAP_ENV = "FLUXQ_ACTIVE_CAP"
AIMD_INTERVAL_ENV = "FLUXQ_AIMD_INCREASE_INTERVAL_S"
DEFAULT_ACTIVE_CAP = 24
DEFAULT_AIMD_INTERVAL_S = 5.0
"""The settings' defaults (``config.settings.Settings``; a test keeps them equal)."""

_INTEGER = re.compile(r"[0-9]{1,4}")
_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Target:
    """Where and how to connect: a TCP host and port or a unix socket, credentials, database."""

    host: str | None
    port: int
    path: str | None
    username: str | None
    password: str | None
    db: int


def parse_args(argv: Sequence[str]) -> tuple[str, bool] | None:
    """(batch name, --json) for ``[--debug] batch status NAME [--json]``; None for anything else."""
    args = list(argv)
    if args[:1] == ["--debug"]:
        args = args[1:]
    if args[:2] != ["batch", "status"]:
        return None
    rest = args[2:]
    as_json = rest.count("--json")
    names = [arg for arg in rest if arg != "--json"]
    if as_json > 1 or len(names) != 1 or not _NAME.fullmatch(names[0]):
        return None
    return names[0], bool(as_json)


def redis_url_from(environ: Mapping[str, str], cwd_has_env_file: bool) -> str | None:
    """The Redis URL the settings would load, when that is certain without loading them."""
    if environ.get(NO_FAST_PATH_ENV, "") not in ("", "0") or cwd_has_env_file:
        return None
    # The settings read variable names case-insensitively: another spelling could win.
    spellings = [name for name in environ if name.lower() == REDIS_URL_ENV.lower()]
    if spellings != [REDIS_URL_ENV]:
        return None
    try:
        return check_redis_url(environ[REDIS_URL_ENV])
    except ValueError:
        return None  # the normal command line names the problem


@dataclass(frozen=True)
class KeySettings:
    """What the key's slots are read and judged with: its label, its cap, the AIMD interval."""

    label: str
    active_cap: int
    aimd_interval_s: float


class _Plain:
    """The API key for ``keys.key_label``, which asks only for ``get_secret_value``."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """The value the settings would read for ``name`` ("" when unset or empty: the settings
    ignore an empty one), or None when another spelling of it is set too."""
    spellings = [key for key in environ if key.lower() == name.lower()]
    if not spellings:
        return ""
    if spellings != [name]:
        return None
    return environ[name]


def key_settings_from(environ: Mapping[str, str]) -> KeySettings | None:
    """The key's label, cap and AIMD interval the settings would load, when that is certain
    without loading them; None otherwise (the normal command line loads and checks them)."""
    api_keys = [_env(environ, name) for name in API_KEY_ENVS]
    if None in api_keys or all(api_keys):
        return None  # an odd spelling, or both set: leave the choice to the settings
    api_key = next((value for value in api_keys if value), "")
    if api_key and not _HEADER_SAFE.fullmatch(api_key):
        return None  # the settings refuse it, and say why
    cap_text, interval_text = _env(environ, ACTIVE_CAP_ENV), _env(environ, AIMD_INTERVAL_ENV)
    if cap_text is None or interval_text is None:
        return None
    cap, interval = DEFAULT_ACTIVE_CAP, DEFAULT_AIMD_INTERVAL_S
    if cap_text:
        if not _INTEGER.fullmatch(cap_text) or not 1 <= int(cap_text) <= 1000:
            return None
        cap = int(cap_text)
    if interval_text:
        if not _DECIMAL.fullmatch(interval_text) or not 0 < float(interval_text) <= 3600:
            return None
        interval = float(interval_text)
    secret = cast("SecretStr", _Plain(api_key)) if api_key else None
    return KeySettings(keys.key_label(secret), cap, interval)


def parse_target(url: str) -> Target | None:
    """What redis-py's ``from_url`` would connect to, for the URL shapes handled here."""
    if any(char in url for char in "#;"):
        return None
    parts = urlsplit(url)
    query_db = None
    if parts.query:
        match = _DB_QUERY.fullmatch(parts.query)
        if match is None:
            return None
        query_db = int(match.group(1))
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if username is not None and password is None:
        return None  # redis-py's handling of a user without a password: leave it to redis-py
    if parts.scheme == "unix":
        return Target(None, 0, unquote(parts.path), username, password, query_db or 0)
    if parts.scheme != "redis" or parts.port == 0 or not parts.hostname:
        return None  # rediss:// (TLS) and anything odd: the normal command line
    db = 0
    digits = unquote(parts.path).replace("/", "")
    if digits:
        if not digits.isdigit():
            return None
        db = int(digits)
    if query_db is not None:
        db = query_db
    host = unquote(parts.hostname)
    return Target(host, parts.port or DEFAULT_PORT, None, username, password, db)


def _command(*args: str | int) -> bytes:
    """One command in RESP, the request side of the protocol: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _connect(target: Target) -> socket.socket:
    if target.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(IO_TIMEOUT_S)
            sock.connect(target.path)
        except BaseException:
            sock.close()
            raise
        return sock
    assert target.host is not None
    sock = socket.create_connection((target.host, target.port), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class ReadFailed(Exception):
    """Redis answered with an error or not at all: the normal command line reports it."""


class _Session:
    """One connection, authenticated and on its database; ``ask`` sends commands in one write
    and reads their replies."""

    def __init__(self, target: Target) -> None:
        import hiredis  # only this read needs it: every other command starts without it

        self._hiredis = hiredis
        self._reader = hiredis.Reader()
        self._setup: list[bytes] = []
        if target.password is not None:
            auth = (target.username, target.password) if target.username else (target.password,)
            self._setup.append(_command("AUTH", *auth))
        if target.db:
            self._setup.append(_command("SELECT", target.db))
        self._sock = _connect(target)

    def __enter__(self) -> _Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sock.close()

    def ask(self, commands: Sequence[tuple[str, ...]]) -> list[object]:
        setup, self._setup = self._setup, []
        requests = setup + [_command(*command) for command in commands]
        self._sock.sendall(b"".join(requests))
        replies: list[object] = []
        while len(replies) < len(requests):
            reply = self._reader.gets()
            if reply is False:
                data = self._sock.recv(65536)
                if not data:
                    raise ReadFailed("connection closed")
                self._reader.feed(data)
                continue
            replies.append(reply)
        if any(isinstance(reply, self._hiredis.ReplyError) for reply in replies):
            raise ReadFailed("error reply")
        return replies[len(setup) :]


def read_status(
    target: Target, name: str, key: KeySettings, *, now_s: float
) -> tuple[BatchStatus, KeyView] | None:
    """The batch's status and its key's slots (None: no such batch), in two round trips: the
    hashes and the slots, then the jobs holding slots, if any holds one."""
    with _Session(target) as session:
        reads = [("HGETALL", keys.batch(name)), ("HGETALL", keys.reasons(name))]
        replies = session.ask(reads + slot_reads(key.label))
        raw, reasons = _as_dict(replies[0]), _as_dict(replies[1])
        status = status_from_records(name, raw, reasons, now_s=now_s)
        if status is None:
            return None
        slots = key_slots_from(
            replies[len(reads) :],
            key_cap=key.active_cap,
            aimd_interval_s=key.aimd_interval_s,
            now_s=now_s,
        )
        holders = holder_reads(slots)
        if holders:
            slots = with_holders(slots, session.ask(holders))
    return status, KeyView(slots, batch_reason(status, slots, now_s=now_s))


def _as_dict(reply: object) -> dict[str, str]:
    """An HGETALL reply (a flat list of field, value) decoded like redis-py's."""
    if not isinstance(reply, list) or len(reply) % 2:
        raise ReadFailed("not a hash")
    items = [item.decode("utf-8") if isinstance(item, bytes) else None for item in reply]
    if any(item is None for item in items):
        raise ReadFailed("not a hash")
    texts = [item for item in items if item is not None]
    return dict(zip(texts[::2], texts[1::2], strict=True))


def _stdout_is_utf8() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding == "utf8"


def _render(
    name: str, as_json: bool, target: Target, key: KeySettings
) -> tuple[str, str, int] | None:
    """(stdout text, stderr text, exit code), or None when the normal command line must run."""
    try:
        found = read_status(target, name, key, now_s=time.time())
    except Exception:  # anything at all: the normal command line reports it in its words
        return None
    if found is None:
        return "", f"fluxq: {no_batch_message(name)}\n", USER_ERROR_EXIT
    status, view = found
    if as_json:
        return json.dumps(status_json(status, view)) + "\n", "", 0
    lines = status_lines(status, view)
    # The normal command prints these lines with rich, markup, highlighting and emoji off
    # (``batch._say_plain``): only control characters are changed by it.
    if any(_CONTROL.search(line) for line in lines):
        return None
    if not _stdout_is_utf8():
        return None
    return "".join(line + "\n" for line in lines), "", 0


def run(argv: Sequence[str]) -> int | None:
    """Answer ``fluxq batch status`` and return the exit code, or None (nothing printed) to let
    the normal command line run."""
    parsed = parse_args(argv)
    if parsed is None:
        return None
    url = redis_url_from(os.environ, os.path.exists(".env"))
    target = None if url is None else parse_target(url)
    key = key_settings_from(os.environ)
    if target is None or key is None:
        return None
    name, as_json = parsed
    rendered = _render(name, as_json, target, key)
    if rendered is None:
        return None
    out, err, code = rendered
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
    return code
