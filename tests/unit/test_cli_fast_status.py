"""``fluxq batch status NAME [--json]``'s fast path (``fluxq.cli.fast_status``) against the normal
command line, both run as real ``python -m fluxq`` processes on a real redis-server.

Each run is under ``-X importtime``, so a test knows which path answered: the fast one never loads
typer. FLUXQ_NO_FAST_PATH=1 forces the normal one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from fluxq.cli.fast_status import Target, parse_args, parse_target, redis_url_from
from fluxq.config.errors import ConfigError
from fluxq.config.redis_url import check_redis_url
from fluxq.config.settings import load_settings
from fluxq.workers.process.embedded_redis import free_port, redis_server_binary
from fluxq.workers.state import keys

HEAVY = ("typer", "rich", "pydantic", "pydantic_settings", "redis", "celery", "click", "asyncio")
"""Top-level packages the fast path must not import."""

PASSWORD = "s3cret-pw"
USER, USER_PASSWORD = "alice", "alice-pw"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    """stderr without the ``-X importtime`` lines."""
    modules: frozenset[str]
    """Top-level packages imported."""

    @property
    def fast(self) -> bool:
        return "typer" not in self.modules


def run_status(cwd: Path, url: str | None, *args: str, normal: bool = False) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXQ_")}
    env.pop("BFL_API_KEY", None)
    if url is not None:
        env["FLUXQ_REDIS_URL"] = url
    if normal:
        env["FLUXQ_NO_FAST_PATH"] = "1"
    done = subprocess.run(
        [sys.executable, "-P", "-X", "importtime", "-m", "fluxq", "batch", "status", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    modules: set[str] = set()
    other: list[str] = []
    for line in done.stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            modules.add(name.split(".")[0])
        else:
            other.append(line)
    return Run(done.returncode, done.stdout, "".join(other), frozenset(modules))


def both(cwd: Path, url: str, *args: str) -> tuple[Run, Run]:
    """The fast path's run (checked to be the fast one) and the normal command line's."""
    fast = run_status(cwd, url, *args)
    normal = run_status(cwd, url, *args, normal=True)
    assert fast.fast, fast
    assert not normal.fast, normal
    return fast, normal


def one_line_failure(run: Run) -> str:
    assert run.code == 2, run
    assert "Traceback" not in run.stderr + run.stdout, run
    line = run.stderr.rstrip("\n")
    assert line.startswith("fluxq: "), run
    assert "\n" not in line, run
    return line


def put_batch(client: redis.Redis, name: str, *, started_ago_s: float | None = None) -> None:
    """A batch's counters as the store keeps them (``keys.batch``, ``keys.reasons``)."""
    record: dict[str, str | int | float] = {
        "total": 1_000_000, "queued": 400_000, "admitted": 20, "submitted": 24, "ready": 3,
        "done": 550_000, "failed": 49_953, "cancelled": 0, "uncertain": 2, "priority": 3,
        "created_at": 1_700_000_000.25, "budget": 1_234_567.5, "committed": 80.25,
        "spent": 1_100_000.4, "paused": "budget",
    }  # fmt: skip
    if started_ago_s is not None:
        # Nearly done and long started, so speed and ETA hardly move between two runs.
        record |= {"queued": 10, "admitted": 0, "submitted": 0, "ready": 0, "done": 950_035}
        record |= {"started_at": time.time() - started_ago_s}
        record.pop("paused")
    client.hset(keys.batch(name), mapping=record)
    client.hset(keys.reasons(name), mapping={"timeout": 953, "moderated": 40_000, "HTTP 500": 9})
    client.zadd(keys.BATCHES, {name: 1_700_000_000.25})


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    return tmp_path


# --- the same bytes on both paths ------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_fast_and_normal_print_the_same_bytes(
    redis_url: str, redis_client: redis.Redis, cwd: Path, as_json: bool
) -> None:
    put_batch(redis_client, "night-1")
    fast, normal = both(cwd, redis_url, "night-1", *(["--json"] if as_json else []))
    assert (fast.code, fast.stdout, fast.stderr) == (normal.code, normal.stdout, normal.stderr)
    assert fast.code == 0
    if as_json:
        data = json.loads(fast.stdout)
        assert data["counts"]["done"] == 550_000
        assert data["reasons"] == {"moderated": 40_000, "timeout": 953, "HTTP 500": 9}
    else:
        assert "paused: budget" in fast.stdout
        assert "budget 1,234,567.5" in fast.stdout


def test_speed_and_eta_are_shown_alike(
    redis_url: str, redis_client: redis.Redis, cwd: Path
) -> None:
    put_batch(redis_client, "night-2", started_ago_s=1_000_000.0)
    fast, normal = both(cwd, redis_url, "night-2")
    assert fast.stdout == normal.stdout
    assert "images/min, ETA" in fast.stdout
    fast, normal = both(cwd, redis_url, "night-2", "--json")
    got, want = json.loads(fast.stdout), json.loads(normal.stdout)
    for moving in ("images_per_minute", "eta_s"):
        assert got.pop(moving) == pytest.approx(want.pop(moving), rel=1e-3)
    assert got == want


def test_the_fast_path_imports_no_heavy_package(
    redis_url: str, redis_client: redis.Redis, cwd: Path
) -> None:
    put_batch(redis_client, "night-3")
    for args in (("night-3",), ("night-3", "--json"), ("nope",)):
        run = run_status(cwd, redis_url, *args)
        assert not run.modules & set(HEAVY), (args, sorted(run.modules & set(HEAVY)))


def test_a_debug_flag_before_the_command_keeps_the_fast_path() -> None:
    assert parse_args(["--debug", "batch", "status", "night-4", "--json"]) == ("night-4", True)


# --- failures --------------------------------------------------------------------------------


def test_a_missing_batch_is_one_line_and_exit_2_on_both_paths(redis_url: str, cwd: Path) -> None:
    fast, normal = both(cwd, redis_url, "no-such-batch")
    assert one_line_failure(fast) == one_line_failure(normal)
    assert "no batch named no-such-batch" in fast.stderr
    assert fast.stdout == normal.stdout == ""


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (free a moment ago)."""
    return free_port()


def test_unreachable_redis_is_the_normal_one_line_without_the_password(
    closed_port: int, cwd: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0"
    for args in (("night",), ("night", "--json")):
        tried = run_status(cwd, url, *args)
        normal = run_status(cwd, url, *args, normal=True)
        line = one_line_failure(tried)
        assert line == one_line_failure(normal)
        assert "cannot reach Redis" in line
        assert PASSWORD not in tried.stderr + tried.stdout
        assert tried.stdout == ""


def test_an_unset_url_goes_the_normal_way(cwd: Path) -> None:
    # Unset: the typer command finds (or starts) the embedded Redis, says so, then finds no batch
    run = run_status(cwd, None, "night")
    assert not run.fast
    assert "embedded Redis" in run.stderr
    assert "no batch named night" in run.stderr


def test_a_bad_url_goes_the_normal_way_and_is_named(cwd: Path) -> None:
    run = run_status(cwd, "http://127.0.0.1:1/0", "night")
    assert not run.fast
    assert "is not a Redis URL" in one_line_failure(run)


def test_rediss_goes_the_normal_way(closed_port: int, cwd: Path) -> None:
    run = run_status(cwd, f"rediss://127.0.0.1:{closed_port}/0", "night", "--json")
    assert not run.fast
    assert "cannot reach Redis" in one_line_failure(run)


def test_a_dotenv_file_goes_the_normal_way(
    redis_url: str, redis_client: redis.Redis, cwd: Path
) -> None:
    put_batch(redis_client, "night-5")
    (cwd / ".env").write_text("FLUXQ_ACTIVE_CAP=3\n", encoding="utf-8")
    run = run_status(cwd, redis_url, "night-5", "--json")
    assert not run.fast
    assert run.code == 0
    assert json.loads(run.stdout)["total"] == 1_000_000


def test_text_rich_would_change_goes_the_normal_way(
    redis_url: str, redis_client: redis.Redis, cwd: Path
) -> None:
    put_batch(redis_client, "night-6")
    redis_client.hset(keys.reasons("night-6"), "bad :thumbs_up: tab\there", 7)
    run = run_status(cwd, redis_url, "night-6")
    normal = run_status(cwd, redis_url, "night-6", normal=True)
    assert not run.fast
    assert run.stdout == normal.stdout
    fast, normal = both(cwd, redis_url, "night-6", "--json")  # JSON escapes it: no rich there
    assert fast.stdout == normal.stdout


# --- passwords, users, databases, unix sockets -----------------------------------------------


@dataclass(frozen=True)
class SecuredRedis:
    port: int
    socket_path: str


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[SecuredRedis]:
    """A private redis-server with a password, a second user, and a unix socket."""
    home = tempfile.mkdtemp(prefix="fxq-")  # short: a socket path has a length limit
    port = free_port()
    sock = os.path.join(home, "r.sock")
    process = subprocess.Popen(
        [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", home, "--requirepass", PASSWORD,
            "--unixsocket", sock, "--unixsocketperm", "700",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.execute_command("ACL", "SETUSER", USER, "on", f">{USER_PASSWORD}", "~*", "+@all")
        client.close()
        yield SecuredRedis(port, sock)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:{pw}@127.0.0.1:{port}/3",
        "redis://{user}:{user_pw}@127.0.0.1:{port}/3",
        "redis://:{pw}@127.0.0.1:{port}?db=3",
        "unix://:{pw}@{sock}?db=3",
    ],
    ids=["password", "user", "db-query", "unix"],
)
def test_auth_select_and_unix_sockets_on_the_fast_path(
    secured_redis: SecuredRedis, cwd: Path, url: str
) -> None:
    client = redis.Redis(host="127.0.0.1", port=secured_redis.port, password=PASSWORD, db=3)
    client.flushdb()
    put_batch(client, "night-7")
    client.close()
    full = url.format(
        pw=PASSWORD, user=USER, user_pw=USER_PASSWORD,
        port=secured_redis.port, sock=secured_redis.socket_path,
    )  # fmt: skip
    for args in (("night-7",), ("night-7", "--json")):
        fast, normal = both(cwd, full, *args)
        assert (fast.code, fast.stdout, fast.stderr) == (normal.code, normal.stdout, normal.stderr)
        assert fast.code == 0
        assert "1,000,000 lines" in fast.stdout or '"total": 1000000' in fast.stdout


def test_a_wrong_password_is_reported_by_the_normal_path(
    secured_redis: SecuredRedis, cwd: Path
) -> None:
    url = f"redis://:not-{PASSWORD}@127.0.0.1:{secured_redis.port}/0"
    tried = run_status(cwd, url, "night")
    normal = run_status(cwd, url, "night", normal=True)
    assert one_line_failure(tried) == one_line_failure(normal)
    assert PASSWORD not in tried.stderr


# --- choosing the path, without a process ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["batch", "status", "n", "--watch"],
        ["batch", "status", "n", "--help"],
        ["batch", "status", "--help"],
        ["batch", "status", "n", "--json", "--json"],
        ["batch", "status", "n", "m"],
        ["batch", "status"],
        ["batch", "status", "-n"],
        ["batch", "status", "n", "--interval", "2"],
        ["batch", "list"],
        ["--debug", "--debug", "batch", "status", "n"],
        ["batch", "--json", "status", "n"],
        ["batch", "status", "a:b"],
        ["status", "n"],
    ],
)
def test_anything_but_the_plain_command_goes_the_normal_way(argv: list[str]) -> None:
    assert parse_args(argv) is None


def test_the_plain_command_is_taken() -> None:
    assert parse_args(["batch", "status", "n-1.x_2"]) == ("n-1.x_2", False)
    assert parse_args(["batch", "status", "--json", "n"]) == ("n", True)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379/0?socket_timeout=1",
        "redis://127.0.0.1:6379/0?db=1&db=2",
        "redis://user@127.0.0.1:6379/0",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:6379/0#x",
        "redis+sentinel://127.0.0.1:26379/mymaster",
    ],
)
def test_urls_not_handled_here_go_the_normal_way(url: str) -> None:
    assert parse_target(url) is None


def test_urls_handled_here() -> None:
    assert parse_target("redis://127.0.0.1") == Target("127.0.0.1", 6379, None, None, None, 0)
    assert parse_target("redis://u:p%40ss@127.0.0.1:7000/5") == Target(
        "127.0.0.1", 7000, None, "u", "p@ss", 5
    )
    assert parse_target("unix:///tmp/r.sock?db=2") == Target(None, 0, "/tmp/r.sock", None, None, 2)


def test_the_environment_chooses_the_path() -> None:
    url = "redis://127.0.0.1:6379/0"
    assert redis_url_from({"FLUXQ_REDIS_URL": f" {url} "}, False) == url
    assert redis_url_from({"FLUXQ_REDIS_URL": url}, True) is None  # .env present
    assert redis_url_from({"FLUXQ_REDIS_URL": url, "FLUXQ_NO_FAST_PATH": "1"}, False) is None
    assert redis_url_from({"FLUXQ_REDIS_URL": url, "FLUXQ_NO_FAST_PATH": "0"}, False) == url
    assert redis_url_from({"FLUXQ_REDIS_URL": url, "fluxq_redis_url": url}, False) is None
    assert redis_url_from({"fluxq_redis_url": url}, False) is None
    assert redis_url_from({}, False) is None
    assert redis_url_from({"FLUXQ_REDIS_URL": "redis://127.0.0.1:x/0"}, False) is None
    assert redis_url_from({"FLUXQ_REDIS_URL": "redis://127.0.0.1:6379/a"}, False) is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0", " redis://127.0.0.1 ", "rediss://127.0.0.1:6380/2",
        "unix:///tmp/r.sock", "unix://", "http://127.0.0.1/0", "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:x/0", "redis:///0", "redis://127.0.0.1/a", "redis://127.0.0.1//3",
        "", "   ",
    ],
)  # fmt: skip
def test_the_pure_url_check_agrees_with_the_settings(url: str) -> None:
    try:
        pure: str | None = check_redis_url(url)
    except ValueError as exc:
        pure = f"error: {exc}"
    try:
        loaded: str | None = load_settings(_env_file=None, redis_url=url).redis_url
    except ConfigError as exc:
        loaded = "error: " + str(exc).split(": ", 2)[-1].removeprefix("Value error, ")
    assert pure == loaded
