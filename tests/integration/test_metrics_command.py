"""``fluxq metrics`` as a real process: one scrape printed, and a server scraped over loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from fluxq.workers.process.children import start_child, stop_child
from fluxq.workers.process.embedded_redis import free_port
from fluxq.workers.state import keys
from tests.support.env import KEY, clean_env


def env_for(redis_url: str) -> dict[str, str]:
    return clean_env() | {"FLUXQ_REDIS_URL": redis_url, "BFL_API_KEY": KEY}


def samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels.get("le")
    }


def test_once_prints_a_scrape_with_redis_values(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    label = keys.key_label(SecretStr(KEY))
    client.zadd(keys.slots(label), {"j1": time.time() + 60, "j2": time.time() + 60})
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fluxq", "metrics", "--once"],
        cwd=tmp_path, env=env_for(redis_url), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)
    assert found["fluxq_leases_held"] == 2
    assert found["fluxq_active_cap"] == 24


def test_the_server_answers_over_loopback_and_stops_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-P", "-m", "fluxq", "metrics", "--port", str(port)]
    process = start_child(argv, env=env_for(redis_url))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fluxq metrics did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert samples(response.text)["fluxq_leases_held"] == 0
    finally:
        stop_child(process, timeout_s=10)
    assert process.returncode is not None
