"""End-to-end fixtures: the simulator on loopback, real `fluxq worker` processes, a real Redis
(tests/support/cluster.py). Worker processes are started with the CLI a user would type and
stopped by their own pids."""

from __future__ import annotations

from tests.support.cluster import make_cluster, sim  # noqa: F401 - fixtures, found by name
