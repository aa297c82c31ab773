"""``fluxq batch status NAME [--json]`` without typer, rich, pydantic, redis-py or Celery.

The command reads two hashes; loading the full command line around it costs far more than the
read (a few hundred milliseconds against a fraction of one). ``fluxq.cli.main`` asks ``run`` first:
it answers when the command and the environment are ones it can answer exactly as the typer
command would (the same bytes on stdout and stderr, the same exit code), and returns None, having
printed nothing, in every other case, so the normal command line runs instead.

It answers only when

* the arguments are exactly ``[--debug] batch status NAME [--json]`` (``--json`` anywhere after
  ``status``), NAME a plain batch name (letters, digits, ``. _ -``);
* FLUXQ_REDIS_URL is set (and no other spelling of it), passes the settings' own check
  (``config.redis_url``), and is ``redis://[user:password@]host[:port][/db]`` or
  ``unix://[:password@]/path[?db=N]`` with no other query option;
* no ``.env`` file is in the working directory (the settings would read it);
* FLUXQ_NO_FAST_PATH is unset, empty or ``0`` (set it to force the normal command line);
* everything went well up to the output: any failure to connect or read (Redis down, a wrong
  password, an error reply, a counter that is not a number) falls back, and the normal command
  reports it in its own words.

Replies are parsed by ``hiredis`` (redis-py's own C parser); the connection is a plain socket.

Known difference: the normal command loads every FLUXQ_* setting and refuses to run when any of
them is invalid; this path checks only FLUXQ_REDIS_URL.
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
from urllib.parse import unquote, urlsplit

from config.redis_url import check_redis_url
from fluxq.cli.batch_view import _as_json, _status_lines, no_batch_message
from workers.state import keys
from workers.state.batches import status_from_records

USER_ERROR_EXIT = 2
"""The normal command line's exit code for a failure a user can fix (``common.USER_ERROR_EXIT``)."""

IO_TIMEOUT_S = 10.0
"""Connect and read timeout; past it the normal command line tries (and reports) instead."""

DEFAULT_PORT = 6379

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
"""Names answered here: nothing typer would take for an option, nothing rich would change."""

_DB_QUERY = re.compile(r"db=([0-9]+)")

_RICH_EMOJI = re.compile(r":\S*:")
"""A ``:name:`` that rich's print may turn into an emoji: such output goes the normal way."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""Characters rich's print strips or expands (tabs, carriage returns, escapes)."""

REDIS_URL_ENV = "FLUXQ_REDIS_URL"
NO_FAST_PATH_ENV = "FLUXQ_NO_FAST_PATH"


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


def read_records(target: Target, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The batch hash and the reasons hash of ``name``, in one round trip."""
    setup: list[bytes] = []
    if target.password is not None:
        auth = (target.username, target.password) if target.username else (target.password,)
        setup.append(_command("AUTH", *auth))
    if target.db:
        setup.append(_command("SELECT", target.db))
    reads = [_command("HGETALL", keys.batch(name)), _command("HGETALL", keys.reasons(name))]
    import hiredis  # only this read needs it: every other command starts without it

    replies: list[object] = []
    reader = hiredis.Reader()
    with _connect(target) as sock:
        sock.sendall(b"".join(setup + reads))
        while len(replies) < len(setup) + len(reads):
            data = sock.recv(65536)
            if not data:
                raise ReadFailed("connection closed")
            reader.feed(data)
            while len(replies) < len(setup) + len(reads):
                reply = reader.gets()
                if reply is False:
                    break
                replies.append(reply)
    if any(isinstance(reply, hiredis.ReplyError) for reply in replies):
        raise ReadFailed("error reply")
    batch, reasons = replies[len(setup) :]
    return _as_dict(batch), _as_dict(reasons)


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


def _render(name: str, as_json: bool, target: Target) -> tuple[str, str, int] | None:
    """(stdout text, stderr text, exit code), or None when the normal command line must run."""
    try:
        raw, reasons = read_records(target, name)
        status = status_from_records(name, raw, reasons, now_s=time.time())
    except Exception:  # anything at all: the normal command line reports it in its words
        return None
    if status is None:
        return "", f"fluxq: {no_batch_message(name)}\n", USER_ERROR_EXIT
    if as_json:
        return json.dumps(_as_json(status)) + "\n", "", 0
    lines = _status_lines(status)
    if any(_RICH_EMOJI.search(line) or _CONTROL.search(line) for line in lines):
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
    if target is None:
        return None
    name, as_json = parsed
    rendered = _render(name, as_json, target)
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
