"""``fluxq demo``: the whole system on one machine, end to end, and a report of what happened.

With no BFL key it runs the simulator, with no FLUXQ_REDIS_URL an embedded Redis, and says so.
That Redis is a private throwaway (``EmbeddedRedis``), not the shared one other commands start
(``workers.process.embedded_redis.ensure_shared``): a demo leaves no server running and none of
its jobs in the user's data directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from fluxq.config.settings import Settings
from fluxq.simulator import SimConfig, running_simulator
from fluxq.tasks.enqueue import enqueue
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.process.children import python_argv, start_child, stop_child
from fluxq.workers.process.embedded_redis import EmbeddedRedis
from fluxq.workers.runtime import Runtime

DEMO_KEY = "fluxq-demo-simulator-key"
DEMO_ENDPOINTS = ("flux-pro-1.1", "flux-dev", "flux-kontext-pro")
DEMO_PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, telephoto photograph",
    "a tiny robot watering a bonsai tree, studio light",
    "an isometric city block at night, neon signs",
)
WORKER_STOP_TIMEOUT_S = 30.0


@dataclass
class DemoResult:
    batch: str
    counts: dict[str, int]
    output_dir: Path
    verified_files: int
    elapsed_s: float
    simulator_stats: dict[str, Any] | None


def demo_request(endpoint: str, i: int) -> dict[str, Any]:
    prompt = DEMO_PROMPTS[i % len(DEMO_PROMPTS)]
    if endpoint.startswith("flux-kontext"):
        return {"prompt": prompt, "seed": i, "aspect_ratio": "16:9"}
    return {"prompt": prompt, "seed": i, "width": 768, "height": 512}


@contextmanager
def _worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = python_argv("fluxq", "worker", "--loglevel", "warning")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = start_child(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_child(process, timeout_s=WORKER_STOP_TIMEOUT_S)


def verify_outputs(batch_dir: Path) -> int:
    """Count images whose sha256 matches their sidecar; raise if any does not."""
    verified = 0
    for sidecar in sorted(batch_dir.glob("*.json")):
        meta = json.loads(sidecar.read_text())
        image = batch_dir / meta["file"]
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        if digest != meta["sha256"]:
            raise RuntimeError(f"{image} does not match its recorded sha256")
        verified += 1
    return verified


def run_demo(
    settings: Settings,
    *,
    jobs: int,
    time_scale: float,
    say: Callable[[str], None],
    progress: Callable[[dict[str, int], int], None],
    timeout_s: float = 600.0,
) -> DemoResult:
    """Start what is missing, enqueue ``jobs`` jobs, wait for all, verify files, stop everything."""
    env = dict(os.environ)
    overrides: dict[str, Any] = {}
    with ExitStack() as stack:
        sim = None
        if settings.bfl_api_key is None:
            sim = stack.enter_context(running_simulator(SimConfig(time_scale=time_scale)))
            env.update(sim.env())
            env["BFL_API_KEY"] = DEMO_KEY
            overrides.update(sim.settings_overrides(), bfl_api_key=SecretStr(DEMO_KEY))
            say(
                f"no BFL_API_KEY: using the local BFL simulator at {sim.base_url} "
                f"(time scale {time_scale}: a 4 s model takes {4 * time_scale:.2f} s)"
            )
        if not settings.redis_url:
            redis_server = stack.enter_context(EmbeddedRedis())
            env["FLUXQ_REDIS_URL"] = redis_server.url
            overrides["redis_url"] = redis_server.url
            say(
                f"no FLUXQ_REDIS_URL: using an embedded Redis at {redis_server.url} of the "
                "demo's own, in memory and stopped at the end (the demo leaves nothing running "
                "and its jobs stay out of the embedded Redis other fluxq commands share)"
            )
        env.setdefault("FLUXQ_OUTPUT_DIR", str(settings.output_dir))
        effective = settings.with_overrides(**overrides)
        rt = celery_runtime(effective)
        stack.callback(rt.close)
        log_path = effective.output_dir / "demo-worker.log"
        stack.enter_context(_worker(env, log_path))
        say(f"started a worker (Celery, thread pools); its log: {log_path}")
        batch = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"

        started = time.monotonic()
        for i in range(jobs):
            endpoint = DEMO_ENDPOINTS[i % len(DEMO_ENDPOINTS)]
            enqueue(rt, endpoint, demo_request(endpoint, i), batch=batch, name=f"image-{i:03d}")
        say(f"enqueued {jobs} jobs in batch {batch} over {', '.join(DEMO_ENDPOINTS)}")
        counts = _wait(rt, batch, jobs, timeout_s, progress)
        elapsed = time.monotonic() - started
        batch_dir = effective.output_dir / batch
        verified = verify_outputs(batch_dir) if batch_dir.exists() else 0
        stats = sim.stats(DEMO_KEY) if sim is not None else None
        result = DemoResult(batch, counts, batch_dir, verified, elapsed, stats)
    return result


def _wait(
    rt: Runtime,
    batch: str,
    total: int,
    timeout_s: float,
    progress: Callable[[dict[str, int], int], None],
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        counts: dict[str, int] = rt.store.batch_counts(batch)
        progress(counts, total)
        finished = counts["done"] + counts["failed"] + counts["cancelled"]
        if finished >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.25)
