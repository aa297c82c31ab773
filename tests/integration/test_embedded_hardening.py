"""The shared embedded Redis's data directory: private whatever it was before, and never two
servers on one append-only file when ``redis.json`` cannot be read.

Each test has a data dir of its own; every redis-server working there is stopped by its pid at
the end (``stop_embedded``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxq.config.errors import ConfigError
from fluxq.workers.process.embedded_redis import (
    CONF_FILE,
    LOG_FILE,
    STATE_FILE,
    ensure_shared,
    read_state,
    stop_shared,
)
from tests.support.embedded import server_pids_in, stop_embedded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data dir"
    yield path
    stop_embedded(path)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes_under(data_dir: Path) -> dict[str, int]:
    """The mode of the directory and of everything in it (``appendonlydir``'s parts too)."""
    found = {".": mode(data_dir)}
    for root, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            path = Path(root) / name
            found[str(path.relative_to(data_dir))] = mode(path)
    return found


def test_an_existing_world_readable_data_dir_and_its_files_are_made_private(
    data_dir: Path,
) -> None:
    # Given a data dir made before, 0755, with a world-readable log and AOF directory
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    (data_dir / LOG_FILE).write_text("an older log line\n")
    os.chmod(data_dir / LOG_FILE, 0o644)
    aof_dir = data_dir / "appendonlydir"  # Redis 7's AOF parts (6 writes appendonly.aof)
    aof_dir.mkdir(mode=0o755)
    os.chmod(aof_dir, 0o755)
    (aof_dir / "old-part.aof").write_text("")
    os.chmod(aof_dir / "old-part.aof", 0o644)
    # When the shared server starts, writes a prompt and saves on stop
    server, started = ensure_shared(data_dir)
    assert started
    client = server.client()
    try:
        client.set("fluxq:job:x", "a private prompt")
    finally:
        client.close()
    assert stop_shared(data_dir) is not None
    # Then the directory is 0700 and every file in it, old or created by the server, 0600
    found = modes_under(data_dir)
    assert found.pop(".") == 0o700
    assert found.pop("appendonlydir") == 0o700
    assert {"redis.log", "redis.conf", "appendonly.aof", "dump.rdb"} <= set(found), found
    assert {name: m for name, m in found.items() if m != 0o600} == {}


def test_a_data_dir_is_tightened_again_when_a_command_finds_its_server_running(
    data_dir: Path,
) -> None:
    server, _ = ensure_shared(data_dir)
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / LOG_FILE, 0o644)

    again, started = ensure_shared(data_dir)

    assert (again.pid, started) == (server.pid, False)
    assert mode(data_dir) == 0o700
    assert mode(data_dir / LOG_FILE) == 0o600


def test_a_garbled_state_file_while_its_server_runs_is_rewritten_not_a_second_server(
    data_dir: Path,
) -> None:
    server, _ = ensure_shared(data_dir)
    client = server.client()
    try:
        client.set("kept", "1")
    finally:
        client.close()
    # When redis.json becomes garbage while its server runs
    (data_dir / STATE_FILE).write_text("{not json")
    found, started = ensure_shared(data_dir)
    # Then the running server is found (pid, port, password from redis.conf), not doubled
    assert server_pids_in(data_dir) == [server.pid]
    assert (found.pid, found.port, found.password, started) == (
        server.pid,
        server.port,
        server.password,
        False,
    )
    assert read_state(data_dir) == found  # recorded again
    assert mode(data_dir / STATE_FILE) == 0o600
    client = found.client()
    try:
        assert client.get("kept") == "1"
    finally:
        client.close()


def test_a_running_server_that_cannot_be_reached_is_refused_in_one_line_not_doubled(
    data_dir: Path,
) -> None:
    server, _ = ensure_shared(data_dir)
    # When neither redis.json nor redis.conf says how to reach it
    (data_dir / STATE_FILE).write_text("garbage")
    (data_dir / CONF_FILE).write_text("port 1\nrequirepass wrong\n")
    with pytest.raises(ConfigError) as caught:
        ensure_shared(data_dir)
    # Then nothing is started: one line names the directory, the pid and the fix
    message = str(caught.value)
    assert "\n" not in message
    assert str(data_dir) in message
    assert f"kill {server.pid}" in message
    assert server_pids_in(data_dir) == [server.pid]


def test_redis_stop_stops_a_server_whose_state_file_is_garbled(data_dir: Path) -> None:
    server, _ = ensure_shared(data_dir)
    (data_dir / STATE_FILE).write_text("")

    stopped = stop_shared(data_dir)

    assert stopped is not None
    assert stopped.pid == server.pid
    assert server_pids_in(data_dir) == []
    assert not (data_dir / STATE_FILE).exists()
