"""``python -m bench.api_isolation``: does one bad request stall ``fluxq api`` for the others?

A real ``fluxq api`` process (webhook mode, shipped defaults) on a real redis-server, probed on
``GET /healthz`` every 20 ms, first idle (the baseline: what a probe costs on this machine),
then while each of these is in progress:

- ``redis-hang``: redis-server stopped (SIGSTOP) for ``--hang-s`` while a forged BFL webhook,
  whose handling writes to Redis, waits on it;
- ``big-body``: a ``--body-mb`` body POSTed to ``/v1/jobs``;
- ``long-polls``: ``--long-polls`` concurrent ``GET /v1/jobs/{id}?wait_s=…`` on a queued job,
  probed while they arrive (the first 3 s) and while the admitted ones are held.

It prints the probe's p50, p99 and max per phase. Everything it starts binds 127.0.0.1 and is
stopped by its pid; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx

from fluxq.workers.process.embedded_redis import redis_server_binary

HEALTHZ_EVERY_S = 0.02
"""How often the probe asks ``/healthz`` (one request at a time, each timed)."""

ARRIVAL_S = 3.0
"""The long polls' arrival, probed apart from the time they are held."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _redis(directory: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    argv = [
        redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(directory),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def _api(redis_url: str, directory: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLUXQ_", "BFL_"))},
        "BFL_API_KEY": "bench-isolation-key",
        "FLUXQ_REDIS_URL": redis_url,
        "FLUXQ_OUTPUT_DIR": str(directory / "out"),
        "FLUXQ_BFL_WEBHOOK_BASE_URL": f"http://127.0.0.1:{port}",
        "FLUXQ_BFL_WEBHOOK_SECRET": "bench-isolation-webhook-secret-0123",
    }
    argv = [sys.executable, "-P", "-m", "fluxq", "api", "--port", str(port)]
    with (directory / "api.log").open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"fluxq api did not start: {(directory / 'api.log').read_text()}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _probe(url: str, seconds: float) -> list[float]:
    """``/healthz`` latencies (s) over ``seconds``; a probe that fails counts as its timeout."""
    timings: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            start = time.monotonic()
            with suppress(httpx.HTTPError):
                client.get(f"{url}/healthz")
            timings.append(time.monotonic() - start)
            time.sleep(HEALTHZ_EVERY_S)
    return timings


def _during(url: str, seconds: float, load: Callable[[], object]) -> list[float]:
    """Probe while ``load`` runs in a thread (started first, joined after)."""
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(0.2)  # the load is under way
    timings = _probe(url, seconds)
    thread.join(timeout=120)
    return timings


def _summary(name: str, timings: list[float]) -> dict[str, float | str | int]:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {
        "phase": name,
        "probes": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def _long_polls(url: str, count: int, firing: Event, answers: Queue[dict[int, int]]) -> None:
    """``count`` concurrent long polls on job ``iso-1`` (run in a process of its own); puts
    how many got each status (0: no answer) on ``answers``.

    Each is one plain HTTP/1.1 request on a connection of its own, read to its end and closed:
    one httpx client pooling ``count`` connections spent a whole core on its pool's
    bookkeeping (O(connections) per response) for the whole run, half this 2-core machine
    taken from the API and the probe. ``firing`` is set as they are sent."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = f"GET /v1/jobs/iso-1?wait_s=20 HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

    async def one() -> int:
        with suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).lower().split(b"\r\n")
                lengths = (int(h.split(b":")[1]) for h in head if h.startswith(b"content-length:"))
                await reader.readexactly(next(lengths, 0))
                return int(head[0].split()[1])
            finally:
                writer.close()
        return 0

    async def all_of_them() -> None:
        firing.set()
        statuses = await asyncio.gather(*(one() for _ in range(count)))
        answers.put(dict(Counter(statuses)))

    asyncio.run(all_of_them())


def run(args: argparse.Namespace) -> list[dict[str, float | str | int]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fluxq-bench-iso-") as tmp:
        directory = Path(tmp)
        with _redis(directory) as (redis_url, redis_pid), _api(redis_url, directory) as url:
            rows.append(_summary("idle", _probe(url, args.phase_s)))

            def forged_webhook() -> None:
                body = json.dumps({"id": "x", "status": "Ready"}).encode()
                headers = {"content-type": "application/json"}
                forged = f"{url}/v1/bfl/webhooks/job-1/forged"
                with httpx.Client(timeout=60) as client, suppress(httpx.HTTPError):
                    client.post(forged, content=body, headers=headers)

            os.kill(redis_pid, signal.SIGSTOP)
            try:
                rows.append(_summary("redis-hang", _during(url, args.hang_s, forged_webhook)))
            finally:
                os.kill(redis_pid, signal.SIGCONT)

            def big_body() -> None:
                prompt = "a" * (args.body_mb * 1024 * 1024)
                body = json.dumps({"endpoint": "flux-dev", "request": {"prompt": prompt}})
                json_type = {"content-type": "application/json"}
                with httpx.Client(timeout=120) as client, suppress(httpx.HTTPError):
                    client.post(f"{url}/v1/jobs", content=body.encode(), headers=json_type)

            rows.append(_summary("big-body", _during(url, args.phase_s, big_body)))

            job = {"endpoint": "flux-dev", "request": {"prompt": "a heron"}, "job_id": "iso-1"}
            httpx.post(f"{url}/v1/jobs", json=job, timeout=10)

            # Another process: the client's 2,000 connections must not share the probe's GIL.
            spawn = multiprocessing.get_context("spawn")
            firing, answers = spawn.Event(), spawn.Queue()
            polls = spawn.Process(
                target=_long_polls, args=(url, args.long_polls, firing, answers), daemon=True
            )
            polls.start()
            firing.wait(timeout=30)  # the process's start-up is no part of the arrival
            # The first seconds are the requests' arrival (most refused: MAX_LONG_POLLS); then
            # the held ones wait.
            rows.append(_summary("long-polls arriving", _probe(url, ARRIVAL_S)))
            rows.append(_summary("long-polls held", _probe(url, args.phase_s)))
            with suppress(queue.Empty):  # 200: held to the end of wait_s; 503: over the bound
                statuses = answers.get(timeout=60)
                shown = ", ".join(
                    f"{n} x {code or 'no answer'}" for code, n in sorted(statuses.items())
                )
                print(f"long polls answered: {shown}")
            polls.join(timeout=60)
            if polls.is_alive():
                polls.terminate()
                polls.join(timeout=10)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_isolation", description=__doc__)
    parser.add_argument("--phase-s", type=float, default=8.0, help="probe time per phase")
    parser.add_argument("--hang-s", type=float, default=8.0, help="how long Redis is stopped")
    parser.add_argument("--body-mb", type=int, default=60, help="the big body's size")
    parser.add_argument("--long-polls", type=int, default=2000, help="concurrent long polls")
    args = parser.parse_args(argv)
    rows = run(args)
    print(f"{'phase':<20} {'probes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for row in rows:
        print(
            f"{row['phase']:<20} {row['probes']:>7} {row['p50_ms']:>8} {row['p99_ms']:>8} "
            f"{row['max_ms']:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
