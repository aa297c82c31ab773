"""Shared fixtures: a real redis-server on a free loopback port, flushed before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis

from fluxq.config.settings import Settings, load_settings
from fluxq.workers.process.embedded_redis import EmbeddedRedis
from fluxq.workers.runtime import Runtime, build_runtime
from tests.pipeline.conftest import InlineDispatcher


def settings_for(env: Mapping[str, str]) -> Settings:
    """The Settings a process started with exactly ``env`` would load (processes tests spawn)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings()


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
    from tests.integration.embedded import stop_embedded

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
    settings = load_settings(bfl_api_key="offline-test-key", output_dir=tmp_path / "out")
    rt = build_runtime(settings, redis_url=redis_url, dispatch=InlineDispatcher())
    yield rt
    rt.close()
