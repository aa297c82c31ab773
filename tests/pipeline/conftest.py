"""Pipeline tests without a broker: the real task logic, a real Redis, the simulator over loopback
(tests/support/pipeline.py)."""

from __future__ import annotations

from tests.support.pipeline import make_pipeline, pipeline, sim  # noqa: F401 - fixtures, by name
