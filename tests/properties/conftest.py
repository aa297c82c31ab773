"""Fixtures for the property tests: the pipeline tests' simulator-backed pipeline, and a
Runtime on the real Redis whose dispatcher only records (enqueue admits and sends submits)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import load_settings
from tests.pipeline.conftest import (  # noqa: F401 - fixtures, found by name
    InlineDispatcher,
    make_pipeline,
    pipeline,
    sim,
)
from workers.runtime import Runtime, build_runtime


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """A Runtime built like the pipeline's, without the simulator: nothing here talks to BFL."""
    settings = load_settings(bfl_api_key="property-test-key", output_dir=tmp_path / "out")
    rt = build_runtime(settings, redis_url=redis_url, dispatch=InlineDispatcher())
    yield rt
    rt.close()
