"""Shared fixtures: a real redis-server on a free loopback port, flushed before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fluxq.config.settings import load_settings
from fluxq.testing import InlineDispatcher
from fluxq.workers.process.embedded_redis import EmbeddedRedis
from fluxq.workers.runtime import Runtime, build_runtime
from tests.support.embedded import stop_embedded
from tests.support.env import KEY


@pytest.fixture(autouse=True, scope="session")
def _no_real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, and every process it starts, keeps fluxq's data dir (the embedded Redis of an
    unset FLUXQ_REDIS_URL) in a temporary directory, never the real home; any server started
    there is stopped by its pid at the end."""
    data = tmp_path_factory.mktemp("xdg-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(data))
        patch.delenv("FLUXQ_DATA_DIR", raising=False)
        yield
    stop_embedded(data / "fluxq")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One redis-server process for the whole session, stopped by its own pid at the end."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The URL of a flushed Redis database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """A Runtime on a flushed real Redis whose dispatcher only records (nothing talks to BFL or
    a broker): for enqueue, validation and callback tests."""
    settings = load_settings(bfl_api_key=KEY, output_dir=tmp_path / "out")
    rt = build_runtime(settings, redis_url=redis_url, dispatch=InlineDispatcher())
    yield rt
    rt.close()


# ---------------------------------------------------------------------------------------------
# Tiers and parallel runs (the README's "Tests")

SLOW_PATHS = ("tests/integration/", "tests/faults/")
"""Tests that start real `fluxq` processes or wait on real time: the `slow` tier (with any test
marked ``@pytest.mark.slow`` by hand)."""

FAST_TIMEOUT_S = 30
"""A fast-tier test that runs longer than this is hung or misplaced: it fails, named."""

DEFAULT_WORKERS = 6
"""Test processes under ``-n auto``. The suite waits on processes, sockets and real time more
than on the CPU, so more workers than cores pay off for the fast tier; the whole suite in
parallel overloads 2 cores (see the README), so the README's command runs one test at a time.
FLUXQ_TEST_WORKERS overrides this."""


def _rank(item: pytest.Item) -> int:
    if item.nodeid.startswith("tests/faults/") or item.get_closest_marker("long"):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW_PATHS):
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow") is not None:
            pass  # marked by hand: pytest's own timeout (120 s) applies
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(FAST_TIMEOUT_S))
    # Longest first: xdist hands tests out in this order, so the minutes-long fault cases start
    # together at the beginning instead of finishing last, alone.
    items.sort(key=_rank)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return int(os.environ.get("FLUXQ_TEST_WORKERS", DEFAULT_WORKERS))
