"""Fault fixtures (tests/support/faults.py): a fresh simulator per case, clusters of real
`fluxq worker` trees on a real Redis, and a restartable redis-server of a case's own."""

from __future__ import annotations

from tests.support.faults import (  # noqa: F401 - fixtures, found by name
    default_cluster,
    fault_cluster,
    fault_sim,
    own_redis,
)
