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


@pytest.mark.parametrize(
    ("scenario_name", "n", "time_scale", "cap"),
    [
        ("l1", N, "0.2", 24),  # the 1 s scenario, five times faster than real
        ("video", 15, "0.02", 5),  # FLUX 3 video: 120 s as 2.4 s, five at a time, MP4s
    ],
)
def test_naive_and_fluxq_finish_every_job_within_the_cap_and_below_the_oracle(
    tmp_path: Path, scenario_name: str, n: int, time_scale: str, cap: int
) -> None:
    # Given a small run of both sides on the scenario
    out = tmp_path / "bench.json"
    argv = [
        sys.executable, "-m", "bench", "throughput", "--scenario", scenario_name, "--n", str(n),
        "--time-scale", time_scale, "--sides", "naive,fluxq", "--json", str(out),
    ]  # fmt: skip
    # When it runs to the end
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Then both sides did every job once, never above the cap, and no better than the oracle
    report = json.loads(out.read_text())
    (scenario,) = report["scenarios"]
    assert set(scenario["sides"]) == {"naive", "fluxq"}
    assert scenario["cap"] == cap
    oracle = scenario["oracle"]["utilisation"]
    for name, side in scenario["sides"].items():
        metrics = side["metrics"]
        assert metrics["done"] == n, (name, metrics["checks"])
        assert metrics["checks"] == [], name
        assert metrics["submits_per_job"] == 1.0, name
        assert metrics["max_active"] <= cap, name
        assert 0 < metrics["utilisation"] <= 1, name
        assert oracle >= metrics["utilisation"], name
        assert len(side["jobs"]) == n
    assert "CHECK FAILED" not in done.stdout
    assert "oracle" in done.stdout


def test_brownout_runs_both_sides_through_the_kill_and_the_503s_and_prints_the_figure(
    tmp_path: Path,
) -> None:
    # Given the brownout benchmark scaled down: 60 jobs on a cap of 4, ten times faster than
    # real (a 0.5 s model; the kill at 4 s, the 503s from 18 s for 6 s), 45 s per side at most
    out = tmp_path / "brownout.json"
    argv = [
        sys.executable, "-m", "bench", "brownout", "--n", "60", "--cap", "4",
        "--time-scale", "0.1", "--deadline-s", "45", "--json", str(out),
    ]  # fmt: skip
    # When it runs to the end
    done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Then both sides ran, each was killed with POSTs in flight, and images per minute over
    # time and the table were printed
    report = json.loads(out.read_text())
    assert list(report["sides"]) == ["naive", "fluxq"]
    for name, side in report["sides"].items():
        figures, marks = side["figures"], side["marks"]
        assert side["error"] is None, name
        assert marks["killed_at"] is not None, name
        assert figures["slow_posts_at_kill"] >= 1, name
        assert figures["images"] >= 1, name
        assert figures["images_per_min_series"], name
        assert figures["max_active"] <= report["cap"], name
    assert "images per minute, per bucket:" in done.stdout
    assert "paid twice (duplicate submits)" in done.stdout
