"""Fixtures for the property tests: the pipeline tests' simulator-backed pipeline
(tests/support/pipeline.py); the root conftest's ``runtime`` records what enqueue sends."""

from __future__ import annotations

from tests.support.pipeline import make_pipeline, pipeline, sim  # noqa: F401 - fixtures, by name
