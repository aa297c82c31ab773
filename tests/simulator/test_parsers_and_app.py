"""CLI parsers, latency distributions, SimConfig validation and the in-process ASGI app.

Pure functions and the all-roles app over httpx.ASGITransport: no sockets needed.
"""

from __future__ import annotations

import asyncio
import random
import statistics

import httpx
import pytest
from pydantic import ValidationError

from fluxq.simulator import SimConfig, create_app, parse_faults, parse_latency
from fluxq.simulator.latency import (
    DEFAULT_LATENCY,
    FixedLatency,
    LogNormalLatency,
    UniformLatency,
    latency_for,
)


def test_parse_latency_reads_each_distribution() -> None:
    # Given the three CLI forms
    table = parse_latency("flux-pro-1.1=lognormal:4:9, flux-dev=uniform:1:3,default=fixed:1")
    # Then each becomes its model
    assert table == {
        "flux-pro-1.1": LogNormalLatency(p50_s=4, p95_s=9),
        "flux-dev": UniformLatency(low_s=1, high_s=3),
        "default": FixedLatency(seconds=1),
    }


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("flux-pro-1.1=normal:4", "flux-pro-1.1=normal:4"),
        ("flux-pro-1.1", "flux-pro-1.1"),
        ("default=fixed:x", "default=fixed:x"),
        ("default=uniform:3:1", "default=uniform:3:1"),
        ("default=lognormal:4", "default=lognormal:4"),
        ("flux-pro-11=fixed:1", "flux-pro-11"),
    ],
)
def test_parse_latency_errors_name_the_bad_item(text: str, named: str) -> None:
    # Given a bad item, When parsed, Then the error names it
    with pytest.raises(ValueError, match=named):
        parse_latency(text)


def test_parse_faults_maps_names_to_config_rates() -> None:
    # Given CLI faults, including the shorthand "drop" for submit and poll
    fields = parse_faults("submit_503=0.05,poll_500=0.01,drop=0.01,slow_delay_s=3")
    # Then they are SimConfig fields, usable directly
    assert fields == {
        "submit_503_rate": 0.05,
        "poll_500_rate": 0.01,
        "submit_drop_rate": 0.01,
        "poll_drop_rate": 0.01,
        "slow_delay_s": 3.0,
    }
    assert SimConfig(**fields).poll_drop_rate == 0.01


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("submit_503=1.5", "submit_503=1.5"),
        ("boom=0.1", "boom"),
        ("drop", "drop"),
        ("slow=x", "slow=x"),
    ],
)
def test_parse_faults_errors_name_the_bad_item(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_faults(text)


def test_lognormal_latency_has_the_requested_median_and_95th_percentile() -> None:
    # Given p50 4 s and p95 9 s
    dist = LogNormalLatency(p50_s=4, p95_s=9)
    rng = random.Random(7)
    # When sampled many times
    samples = sorted(dist.sample(rng) for _ in range(20_000))
    # Then the median and 95th percentile are close to the request
    assert statistics.median(samples) == pytest.approx(4, rel=0.05)
    assert samples[int(0.95 * len(samples))] == pytest.approx(9, rel=0.07)


def test_latency_lookup_prefers_configured_values_then_builtin_per_endpoint() -> None:
    # Given a configured default only
    configured = {"default": FixedLatency(seconds=1)}
    # Then it beats built-ins; without configuration each endpoint has its own built-in
    assert latency_for("flux-pro-1.1-ultra", configured) == FixedLatency(seconds=1)
    assert latency_for("flux-pro-1.1-ultra", {}) == DEFAULT_LATENCY["flux-pro-1.1-ultra"]
    assert latency_for("flux-2-klein-4b", {}).p50_s < latency_for("flux-pro-1.1", {}).p50_s  # type: ignore[union-attr]


def test_sim_config_rejects_bad_values_naming_them() -> None:
    # Given bad values, When a SimConfig is built, Then every bad field is named
    with pytest.raises(ValidationError) as caught:
        SimConfig(
            time_scale=0, error_rate=2, request_moderation_regex="(", latency={"nope": "fixed:1"}
        )
    names = {e["loc"][0] for e in caught.value.errors()}
    assert names == {"time_scale", "error_rate", "request_moderation_regex", "latency"}


def test_sim_config_repr_masks_allowed_keys() -> None:
    config = SimConfig(allowed_keys=["super-secret-key"])
    assert "super-secret-key" not in repr(config)
    assert config.key_allowed("super-secret-key")
    assert not config.key_allowed("other")


def test_create_app_serves_bfl_in_process_over_asgi_transport() -> None:
    # Given the all-roles app in-process (no sockets)
    app = create_app(SimConfig(time_scale=0.0001))

    async def scenario() -> tuple[dict[str, object], dict[str, object], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bfl.test") as http:
            submitted = (
                await http.post("/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": "k"})
            ).json()
            result: dict[str, object] = {"status": "Pending"}
            for _ in range(200):
                result = (await http.get(submitted["polling_url"])).json()
                if result["status"] != "Pending":
                    break
                await asyncio.sleep(0.001)
            sample = result["result"]["sample"]  # type: ignore[index]
            downloaded = await http.get(sample)
            return submitted, result, downloaded.status_code

    # When a task is submitted, polled and downloaded
    submitted, result, download_status = asyncio.run(scenario())
    # Then URLs point at the request's own host, and everything works
    assert str(submitted["polling_url"]).startswith("http://bfl.test/v1/get_result?id=")
    assert result["status"] == "Ready"
    assert download_status == 200
