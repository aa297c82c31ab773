"""Benchmark the BFL simulator: get_result polls per second on one listener, and image encoding.

Run: ``.venv/bin/python bench/bench_simulator.py``. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import httpx
import uvicorn

from fluxq.simulator import SimConfig, create_app
from fluxq.simulator.images import render_image
from fluxq.simulator.listeners import bind_loopback

POLLS = 2000
"""get_result calls timed, over one keep-alive connection."""

WARMUP_POLLS = 100
"""Untimed calls first, so imports and the first connection do not count."""

IMAGE_RUNS = 20
"""1024x768 JPEG encodings timed (uncached: render_image is called directly)."""

DEADLINE_S = 120.0
"""The benchmark gives up rather than run longer than this."""


def _start_listener(config: SimConfig) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = bind_loopback("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            http="h11",
            loop="asyncio",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the listener did not start")
        time.sleep(0.01)
    return server, thread, f"http://{host}:{port}"


def bench_polls() -> float:
    """Polls per second of one Pending task, client included, one process (one GIL)."""
    config = SimConfig(latency={"default": "fixed:1000000"})
    server, thread, base_url = _start_listener(config)
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            submitted = http.post(
                "/v1/flux-pro-1.1", json={"prompt": "bench"}, headers={"x-key": "bench"}
            )
            polling_url = submitted.json()["polling_url"]
            for _ in range(WARMUP_POLLS):
                http.get(polling_url).raise_for_status()
            started = time.perf_counter()
            for _ in range(POLLS):
                http.get(polling_url).raise_for_status()
                if time.perf_counter() - started > DEADLINE_S:
                    raise RuntimeError("polling benchmark exceeded its deadline")
            elapsed = time.perf_counter() - started
    finally:
        server.should_exit = True
        thread.join(10)
    return POLLS / elapsed


def bench_jpeg_ms() -> float:
    """Median milliseconds to render and encode a 1024x768 JPEG, cache disabled."""
    timings = []
    for run in range(IMAGE_RUNS):
        started = time.perf_counter()
        render_image(f"bench prompt {run}", run, 1024, 768, "jpeg")
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    """Run both benchmarks and print their figures."""
    polls_per_s = bench_polls()
    jpeg_ms = bench_jpeg_ms()
    print(
        f"polls/s        {polls_per_s:8.0f}  ({POLLS} get_result calls, one keep-alive connection)"
    )
    indent = " " * 26
    print(f"{indent}client overhead included: the httpx client and the uvicorn")
    print(f"{indent}listener share one process (one GIL); {os.cpu_count()} CPUs here")
    print(f"1024x768 JPEG  {jpeg_ms:8.1f} ms (median of {IMAGE_RUNS}, cache disabled)")


if __name__ == "__main__":
    main()
