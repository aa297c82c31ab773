"""FLUX 3 video in the simulator: its modes, strict 422s, the 5-slot cap, 503s for capacity, an
MP4 per sample, and draft batches with a draft cache per sample that draft_enhance takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fluxq.config.errors import InvalidRequest, RateLimited, ServerError
from fluxq.config.requests import FluxPro11Inputs
from fluxq.config.video import mp4_problem
from fluxq.simulator import SimulatorServer
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import LONG, wait_terminal

VIDEO = "flux-3-video"
T2V = {"mode": "t2v", "prompt": "a storm over a harbour", "duration": 5}


def test_a_t2v_task_ends_ready_with_one_mp4_valid_for_two_hours(
    sim: SimulatorServer, client: BFLClient, tmp_path: Path
) -> None:
    submitted = client.submit_json(VIDEO, T2V)
    result = wait_terminal(client, submitted.polling_url)

    assert result.status is Status.READY
    assert result.sample_url is not None
    assert ".mp4?" in result.sample_url
    assert (result.samples, result.draft_caches) == ((result.sample_url,), ())
    got = client.download(result.sample_url, tmp_path / "a.mp4")
    assert got.content_type == "video/mp4"
    assert mp4_problem((tmp_path / "a.mp4").read_bytes()[:8]) is None
    # signed for the video's 2 hours, not an image's 10 minutes (20 minutes on: still valid,
    # and within the simulator's 30 minutes of retention)
    sim.simulator.clock.advance(1200)
    assert client.download(result.sample_url, tmp_path / "b.mp4").sha256 == got.sha256


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**T2V, "start_video": "https://e.com/a.mp4"}, ["body", "start_video"]),
        ({**T2V, "seed": 3}, ["body", "seed"]),  # strict even with reject_unknown_fields off
        ({**T2V, "batch": 2}, ["body", "batch"]),
        ({"mode": "draft_enhance", "draft_cache": "x", "duration": 5}, ["body", "duration"]),
    ],
)
def test_a_field_outside_its_mode_or_unknown_is_a_422_naming_it(
    sim: SimulatorServer, client: BFLClient, body: dict[str, Any], loc: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.submit_json(VIDEO, body)

    assert [list(error.loc) for error in caught.value.errors] == [loc]
    assert sim.stats(KEY)["invalid_422"] == 1


def test_five_video_tasks_fill_the_video_class_while_images_still_go(
    sim: SimulatorServer, client: BFLClient
) -> None:
    sim.configure(latency={"default": LONG})
    for _ in range(5):
        client.submit_json(VIDEO, T2V)

    with pytest.raises(RateLimited):
        client.submit_json(VIDEO, T2V)
    client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))  # the account's 24 are not full
    stats = sim.stats(KEY)
    assert stats["max_active_by_group"] == {VIDEO: 5}
    assert (stats["submits"], stats["rate_limited_429"]) == (6, 1)


def test_the_video_capacity_knob_answers_503_and_makes_no_task(
    sim: SimulatorServer, client: BFLClient
) -> None:
    sim.configure(video_503_rate=1.0)

    with pytest.raises(ServerError) as caught:
        client.submit_json(VIDEO, T2V)

    assert caught.value.status_code == 503
    assert sim.stats(KEY)["submits"] == 0
    assert sim.stats()["counters"]["fault_video_503"] == 1
    client.submit("flux-pro-1.1", FluxPro11Inputs(prompt="x"))  # images are not refused


def test_a_draft_batch_gives_every_sample_and_a_cache_each_that_draft_enhance_takes(
    sim: SimulatorServer, client: BFLClient, tmp_path: Path
) -> None:
    draft = client.submit_json(VIDEO, {**T2V, "draft": True, "batch": 3})
    result = wait_terminal(client, draft.polling_url)

    assert result.status is Status.READY
    assert len(result.samples) == len(set(result.samples)) == 3
    assert result.samples[0] == result.sample_url
    assert len(result.draft_caches) == 3
    hashes = {
        client.download(url, tmp_path / f"{n}.mp4").sha256 for n, url in enumerate(result.samples)
    }
    assert len(hashes) == 3  # three different clips
    assert all(mp4_problem((tmp_path / f"{n}.mp4").read_bytes()[:8]) is None for n in range(3))

    enhanced = client.submit_json(
        VIDEO, {"mode": "draft_enhance", "draft_cache": result.draft_caches[1]}
    )
    final = wait_terminal(client, enhanced.polling_url)
    assert final.status is Status.READY
    assert (final.samples, final.draft_caches) == ((final.sample_url,), ())


@pytest.mark.parametrize(
    "cache",
    ["https://elsewhere.example/draft/abc_1?exp=9999999999&sig=00", "BASE64CACHE"],
)
def test_draft_enhance_with_a_cache_that_is_no_draft_of_ours_is_a_422(
    sim: SimulatorServer, client: BFLClient, cache: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.submit_json(VIDEO, {"mode": "draft_enhance", "draft_cache": cache})

    assert [list(error.loc) for error in caught.value.errors] == [["body", "draft_cache"]]
    assert sim.stats(KEY)["submits"] == 0
