"""``fluxq api`` as a service uses it: a real server process, real workers, the simulator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import AUTH, TOKEN, ApiServer, api_argv
from tests.support.cluster import Cluster
from tests.support.env import KEY
from tests.support.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _serve(cluster: Cluster, cwd: Path, port: int) -> Iterator[tuple[Cluster, httpx.Client]]:
    """A worker and a ``fluxq api`` (token set) on ``port`` for ``cluster``; both stopped after."""
    server = ApiServer(cluster.env | {"FLUXQ_API_TOKEN": TOKEN}, cwd, port=port)
    try:
        server.wait_up()
        cluster.start_worker()
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=70) as client:
            yield cluster, client
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()


@pytest.fixture
def served(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> Iterator[tuple[Cluster, httpx.Client]]:
    """A cluster with one worker and a ``fluxq api`` (token set) in front of it."""
    yield from _serve(make_cluster(), tmp_path, free_port())


def test_a_job_is_posted_waited_for_and_downloaded(
    served: tuple[Cluster, httpx.Client],
) -> None:
    _cluster, client = served
    # Ready once the worker has beaten (each worker process says so at start and every sweep)
    deadline = time.monotonic() + 30
    ready = client.get("/readyz")
    while ready.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["redis"]) == (200, True), ready.text
    assert ready.json()["workers"] >= 1
    assert client.get("/v1/jobs/heron", headers={"Authorization": "Bearer no"}).status_code == 401
    body = {
        "endpoint": "flux-dev",
        "request": {"prompt": "a heron", "width": 256, "height": 256, "seed": 1},
        "job_id": "heron",
    }
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "heron"
    deadline = time.monotonic() + 45
    job = client.get("/v1/jobs/heron", params={"wait_s": 30}).json()
    while job["state"] not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
        job = client.get("/v1/jobs/heron", params={"wait_s": 30}).json()
    assert job["state"] == "done", job
    assert {"queued", "submitted", "done"} <= set(job["times"])
    assert job["cost"] is not None
    image = client.get("/v1/jobs/heron/image")
    assert image.status_code == 200
    assert image.headers["content-type"].startswith("image/")
    assert image.headers["etag"] == f'"{hashlib.sha256(image.content).hexdigest()}"'
    assert image.headers["etag"] == f'"{job["sha256"]}"'
    assert Path(job["path"]).read_bytes() == image.content
    assert client.post("/v1/jobs", json=body).status_code == 200  # a retry finds it
    assert client.delete("/v1/jobs/heron").status_code == 409  # done: nothing to cancel


LINES = 2_000
"""Lines in the long batch: enough for ~80 waves of the cap and several 64 KiB body chunks;
its CPU (~17 ms a job for the whole pipeline on one machine) is what bounds it on 2 cores."""


@pytest.fixture
def served_hooked(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> Iterator[tuple[Cluster, httpx.Client]]:
    """``served`` in webhook mode: the simulator calls ``fluxq api`` back, which refills slots."""
    port = free_port()
    cluster = make_cluster(
        FLUXQ_BFL_WEBHOOK_BASE_URL=f"http://127.0.0.1:{port}",
        FLUXQ_BFL_WEBHOOK_SECRET="integration-webhook-secret-0123456789",
    )
    yield from _serve(cluster, tmp_path, port)


@pytest.mark.timeout(700)
@pytest.mark.long
def test_a_2000_line_batch_posted_over_http_runs_to_the_end(
    served_hooked: tuple[Cluster, httpx.Client],
) -> None:
    # Webhook mode: no polls, so half the CPU per job of polling mode, which bounds this run on
    # 2 cores (polling mode's HTTP path is the same code, run by the tests above)
    cluster, client = served_hooked
    # 1 s tasks: each slot turns over about once a second
    cluster.sim.configure(latency={"default": {"kind": "fixed", "seconds": 1.0}})
    # 256x256 images: the simulator renders each one, and full-size JPEGs cost it minutes
    lines = (
        json.dumps(
            {
                "id": f"l{i:05d}",
                "prompt": f"a fox, take {i}",
                "seed": i,
                "width": 256,
                "height": 256,
            }
        )
        + "\n"
        for i in range(LINES)
    )
    body = "".join(lines).encode()
    created = client.post(
        "/v1/batches",
        params={"name": "foxes", "endpoint": "flux-dev"},
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "batch": "foxes", "added": LINES, "already_there": 0, "conflicts": 0, "lines": LINES,
    }  # fmt: skip
    # ~20 jobs/s on a slow 2-core machine: 2,000 lines take up to ~2 min there
    deadline = time.monotonic() + 600
    status = client.get("/v1/batches/foxes").json()
    while not status["finished"] and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get("/v1/batches/foxes").json()
    assert status["counts"]["done"] == LINES, status
    report = client.get("/v1/batches/foxes/report")
    rows = [json.loads(line) for line in report.text.splitlines()]
    assert len(rows) == LINES
    assert {row["state"] for row in rows} == {"done"}
    stats = cluster.sim.stats(KEY)
    assert (stats["submits"], stats["duplicate_submits"], stats["polls"]) == (LINES, 0, 0)
    metrics = client.get("/metrics")
    assert f'fluxq_batch_jobs{{batch="foxes",state="done"}} {LINES}.0' in metrics.text


def test_refuses_every_interface_without_a_token(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster()
    refused = subprocess.run(
        api_argv("--host", "0.0.0.0", "--port", str(free_port())),
        env=cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "FLUXQ_API_TOKEN" in refused.stderr
    assert refused.stdout == ""
