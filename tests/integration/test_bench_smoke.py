"""The throughput benchmark end to end, small and fast: real Redis, simulator and `fluxq worker`.

Run as a user runs it (``python -m bench throughput``), bounded, and judged from its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 40


def test_naive_and_fluxq_finish_every_job_within_the_cap_and_below_the_oracle(
    tmp_path: Path,
) -> None:
    # Given a small run of both sides on the 1 s scenario, five times faster than real
    out = tmp_path / "bench.json"
    argv = [
        sys.executable, "-m", "bench", "throughput", "--scenario", "l1", "--n", str(N),
        "--time-scale", "0.2", "--sides", "naive,fluxq", "--json", str(out),
    ]  # fmt: skip
    # When it runs to the end
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Then both sides did every job once, never above the cap, and no better than the oracle
    report = json.loads(out.read_text())
    (scenario,) = report["scenarios"]
    assert set(scenario["sides"]) == {"naive", "fluxq"}
    oracle = scenario["oracle"]["utilisation"]
    for name, side in scenario["sides"].items():
        metrics = side["metrics"]
        assert metrics["done"] == N, (name, metrics["checks"])
        assert metrics["checks"] == [], name
        assert metrics["submits_per_job"] == 1.0, name
        assert metrics["max_active"] <= scenario["cap"], name
        assert 0 < metrics["utilisation"] <= 1, name
        assert oracle >= metrics["utilisation"], name
        assert len(side["jobs"]) == N
    assert "CHECK FAILED" not in done.stdout
    assert "oracle" in done.stdout
