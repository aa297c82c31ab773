"""FLUX 3 video end to end: a 20-job batch in all four modes, POSTed to /v1/flux-3-video within
its 5-slot class, polled, and saved as MP4s (checked: an ``ftyp`` box, the sidecar's sha256);
a draft batch saves every sample and its draft caches, which a later draft_enhance job uses."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fluxq.simulator import app as sim_app
from fluxq.tasks import save
from fluxq.tasks.enqueue import enqueue
from fluxq.tasks.uncertain import doubt_hold_until_s
from fluxq.workers.state.jobs import State
from tests.support.pipeline import Pipeline

VIDEO = "flux-3-video"
IMAGE_URL = "https://example.com/frame.png"
BATCH = "videos"

FIRST_WAVE: dict[str, dict[str, Any]] = {
    **{
        f"t2v-{n}": {"mode": "t2v", "prompt": f"a fox at dawn, take {n}", "duration": 5 + n}
        for n in range(5)
    },
    "t2v-fhd": {"mode": "t2v", "prompt": "rain", "resolution": "fhd", "aspect_ratio": "9:16"},
    "i2v-one": {"mode": "i2v", "prompt": "push in", "keyframes": IMAGE_URL},
    "i2v-two": {"mode": "i2v", "prompt": "open, close", "keyframes": [IMAGE_URL, "aGVsbG8="]},
    "i2v-waypoints": {
        "mode": "i2v",
        "prompt": "a walk",
        "keyframes": [IMAGE_URL] * 4,
        "duration": 8,
    },
    "i2v-timed": {
        "mode": "i2v",
        "prompt": "a seed grows",
        "keyframes": [[0, IMAGE_URL], [4.5, IMAGE_URL], [10, IMAGE_URL]],
        "duration": 10,
    },
    "i2v-silent": {
        "mode": "i2v",
        "prompt": "still water",
        "keyframes": IMAGE_URL,
        "generate_audio": False,
    },
    **{
        f"v2v-{n}": {"mode": "v2v", "prompt": f"the rider goes on, {n}", "start_video": "aGk="}
        for n in range(4)
    },
    "draft-three": {"mode": "t2v", "prompt": "a storm", "draft": True, "batch": 3},
    "draft-two": {"mode": "v2v", "prompt": "on", "start_video": "aGk=", "draft": True, "batch": 2},
    "draft-one": {"mode": "t2v", "prompt": "a harbour", "draft": True},
}
"""18 jobs of t2v, i2v (each keyframe shape), v2v, and drafts (batches of 3, 2 and 1)."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_mp4s(out: Path, name: str) -> dict[str, Any]:
    """The job's sidecar, after checking every file it lists: an MP4 (``ftyp`` at offset 4)
    whose size and sha256 are the sidecar's."""
    sidecar = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert sidecar["file"] == f"{name}.mp4"
    assert sidecar["files"][0]["file"] == f"{name}.mp4"
    assert sidecar["sha256"] == sidecar["files"][0]["sha256"]
    for listed in sidecar["files"]:
        path = out / listed["file"]
        data = path.read_bytes()
        assert len(data) == listed["size_bytes"] > 0
        assert data[4:8] == b"ftyp", listed["file"]
        assert sha256_of(path) == listed["sha256"]
    return dict(sidecar)


def test_a_20_job_video_batch_in_all_four_modes_is_saved_as_verified_mp4s(
    pipeline: Pipeline,
) -> None:
    # Given 18 video jobs of t2v, i2v, v2v and drafts in one batch
    ids = {
        name: enqueue(pipeline.rt, VIDEO, body, batch=BATCH, name=name)
        for name, body in FIRST_WAVE.items()
    }
    # When they run
    pipeline.drain(timeout_s=90.0)
    # Then each is done, saved as <name>.mp4 (a draft batch: one file per sample)
    out = pipeline.rt.settings.output_dir / BATCH
    for name, job_id in ids.items():
        job = pipeline.job(job_id)
        assert job.state is State.DONE, (name, job.reason)
        assert job.path == str(out / f"{name}.mp4")
        assert job.sha256 == sha256_of(out / f"{name}.mp4")
    sidecars = {name: check_mp4s(out, name) for name in ids}
    assert [f["file"] for f in sidecars["draft-three"]["files"]] == [
        "draft-three.mp4",
        "draft-three-2.mp4",
        "draft-three-3.mp4",
    ]
    assert len({f["sha256"] for f in sidecars["draft-three"]["files"]}) == 3
    assert len(sidecars["draft-two"]["files"]) == 2
    assert len(sidecars["draft-one"]["files"]) == 1
    # a draft's sidecar holds a cache per sample, the first as draft_cache; others hold none
    assert len(sidecars["draft-three"]["draft_caches"]) == 3
    assert sidecars["draft-three"]["draft_cache"] == sidecars["draft-three"]["draft_caches"][0]
    assert "draft_cache_valid_until" in sidecars["draft-one"]
    assert "draft_cache" not in sidecars["t2v-0"]
    assert len(sidecars["t2v-0"]["files"]) == 1

    # When two draft_enhance jobs render chosen drafts from their sidecars' caches
    enhance = {
        "enhanced-3-2": sidecars["draft-three"]["draft_caches"][1],
        "enhanced-1": sidecars["draft-one"]["draft_cache"],
    }
    more = {
        name: enqueue(
            pipeline.rt,
            VIDEO,
            {"mode": "draft_enhance", "draft_cache": cache},
            batch=BATCH,
            name=name,
        )
        for name, cache in enhance.items()
    }
    pipeline.drain(timeout_s=60.0)
    # Then they are saved too: 20 jobs, 20 POSTs, never more than 5 video tasks at BFL
    for name, job_id in more.items():
        assert pipeline.job(job_id).state is State.DONE, (name, pipeline.job(job_id).reason)
        assert "draft_cache" not in check_mp4s(out, name)
    stats = pipeline.stats()
    assert stats["submits_by_endpoint"] == {VIDEO: 20}
    assert stats["invalid_422"] == 0
    assert stats["max_active_by_group"][VIDEO] <= 5
    assert stats["rate_limited_429"] == 0
    manifest = [
        json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()
    ]
    assert sorted(entry["name"] for entry in manifest) == sorted([*ids, *more])
    by_name = {entry["name"]: entry for entry in manifest}
    assert by_name["draft-two"]["files"] == ["draft-two.mp4", "draft-two-2.mp4"]


def test_a_body_that_is_no_mp4_is_retried_and_fails_saying_so(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a delivery host (in this process) that serves a PNG where an MP4 belongs
    monkeypatch.setattr(sim_app, "render_mp4", lambda *args: b"\x89PNG\r\n\x1a\nnot a video")
    settings = pipeline.rt.settings
    # a video URL lives 2 hours: with it taken as expired, the attempts bound ends the retries
    monkeypatch.setattr(save, "url_valid_s", lambda rt, job: 0.0)
    job_id = enqueue(pipeline.rt, VIDEO, {"mode": "t2v", "prompt": "p"}, batch=BATCH, name="bad")

    pipeline.drain(timeout_s=60.0)

    job = pipeline.job(job_id)
    assert job.state is State.FAILED
    assert "not an MP4: no 'ftyp' box at offset 4" in (job.reason or "")
    assert job.download_attempts == settings.download_max_attempts
    assert not list((settings.output_dir / BATCH).glob("bad*.mp4"))
    assert not list((settings.output_dir / BATCH).glob(".bad*"))  # no temporary file left


def test_a_video_slots_doubtful_hold_is_bounded_by_the_video_deadline_not_the_image_one(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    # Given a poll deadline of 5 s, under the 15 s floor of a doubtful hold
    pipeline = make_pipeline(poll_deadline_s=5.0, doubt_hold_floor_s=15.0)
    rt = pipeline.rt
    video = pipeline.job(enqueue(rt, VIDEO, {"mode": "t2v", "prompt": "p"}, batch=BATCH))
    image = pipeline.job(enqueue(rt, "flux-dev", {"prompt": "p"}, batch=BATCH))
    # When each one's POST outcome is unknown, Then an image's hold stops at the deadline and a
    # video's at 4 times it (its floor, 15 s, is then the bound)
    assert doubt_hold_until_s(rt, image) - rt.clock() == pytest.approx(5.0, abs=0.5)
    assert rt.settings.poll_deadline_s_for("video/mp4") == 20.0
    assert doubt_hold_until_s(rt, video) - rt.clock() == pytest.approx(15.0, abs=0.5)
