"""Fixtures for the property tests: the pipeline tests' simulator-backed pipeline, and a
Runtime on the real Redis whose dispatcher only records (enqueue admits and sends submits)."""

from __future__ import annotations

from tests.pipeline.conftest import (  # noqa: F401 - fixtures, found by name
    InlineDispatcher,
    make_pipeline,
    pipeline,
    sim,
)
