"""The loop a user writes in an afternoon: BFL's documented submit-then-poll, made concurrent.

``asyncio.Semaphore(cap)`` keeps at most ``cap`` jobs in flight; each job POSTs, polls its
polling_url every ``--poll-s`` (BFL's example sleeps 0.5 s), downloads the sample and writes it.
A 429 waits ``--retry-s`` and retries. Run by the benchmark in its own process, so its CPU and
memory are its own: it prints ``ready``, waits for a line on stdin, works, writes JSON to
``--out``, prints ``done`` and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.plan import SCENARIOS


async def one_job(
    http: httpx.AsyncClient, args: argparse.Namespace, index: int, sem: asyncio.Semaphore
) -> dict[str, Any]:
    """Submit, poll until Ready, download: the whole life of one job, inside the semaphore."""
    record: dict[str, Any] = {"index": index, "retries_429": 0}
    async with sem:
        while True:
            response = await http.post(
                f"{args.base_url}/v1/{args.endpoint}",
                json=SCENARIOS[args.scenario].request(index),  # every side sends the same
                headers={"x-key": args.key},
            )
            if response.status_code != 429:
                break
            record["retries_429"] += 1
            await asyncio.sleep(args.retry_s)
        response.raise_for_status()
        task = response.json()
        record.update(task_id=task["id"], submitted_at=time.time())
        while True:
            await asyncio.sleep(args.poll_s)
            result = (await http.get(task["polling_url"], headers={"x-key": args.key})).json()
            if result["status"] == "Ready":
                break
            if result["status"] not in ("Pending", "Task not found"):
                return {**record, "error": result["status"]}
        record["seen_ready_at"] = time.time()
        image = await http.get(result["result"]["sample"])
        image.raise_for_status()
        image_path(args, index).write_bytes(image.content)
        record["downloaded_at"] = time.time()
    return record


def image_path(args: argparse.Namespace, index: int) -> Path:
    """Where job ``index``'s image (or video) is written."""
    return Path(args.image_dir) / f"{index}.out"


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every job at once, the semaphore admitting ``cap`` of them at a time; with
    ``--skip-existing``, only jobs whose image is not on disk yet (a re-run after a crash)."""
    indices = [
        i for i in range(args.n) if not (args.skip_existing and image_path(args, i).exists())
    ]
    sem = asyncio.Semaphore(args.cap)
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:  # loopback only: no proxy
        jobs = [one_job(http, args, i, sem) for i in indices]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    return [
        {"index": i, "error": repr(outcome)} if isinstance(outcome, BaseException) else outcome
        for i, outcome in zip(indices, outcomes, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.naive")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--cap", type=int, required=True)
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--retry-s", type=float, default=1.0)
    parser.add_argument("--image-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--skip-existing", action="store_true", help="Skip jobs whose image is already written."
    )
    args = parser.parse_args(argv)
    print("ready", flush=True)
    if not sys.stdin.readline():
        return  # the benchmark went away before saying go
    jobs = asyncio.run(run(args))
    args.out.write_text(json.dumps({"jobs": jobs}))
    print("done", flush=True)
    sys.stdin.read()  # the benchmark reads our CPU and memory, then closes stdin


if __name__ == "__main__":
    main()
