"""A video result as fluxq reads it: the MP4 check and the simulator's MP4 writer, a draft's
result shape (UNCONFIRMED, named in fluxq.config.video), each sample's file name, and the
settings that scale for video (download bound, poll deadline)."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

from fluxq.config.endpoint_spec import IMAGE
from fluxq.config.settings import load_settings
from fluxq.config.video import (
    MP4_MEDIA,
    RESULT_DRAFT_CACHE_FIELD,
    RESULT_DRAFT_CACHES_FIELD,
    RESULT_SAMPLES_FIELD,
    VIDEO_DOWNLOAD_MAX_BYTES,
    VIDEO_POLL_DEADLINE_FACTOR,
    mp4_problem,
)
from fluxq.simulator.videos import read_draft_cache, render_mp4, sign_draft_cache
from fluxq.tasks.poll import poll_deadline_s
from fluxq.tasks.samples import Samples, download_bound, media_problem, sample_paths
from fluxq.workers.bfl.responses import parse_result
from tests.support.env import KEY


def boxes(data: bytes) -> list[tuple[bytes, int]]:
    """The top-level boxes of an MP4: (type, size), walking their size fields."""
    found, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        found.append((kind, size))
        offset += size
    assert offset == len(data), "the last box overruns the file"
    return found


def test_the_simulators_mp4_is_ftyp_moov_mdat_with_sizes_that_add_up() -> None:
    data = render_mp4("a fox", 7, 1, 5.0)

    assert [kind for kind, _ in boxes(data)] == [b"ftyp", b"moov", b"mdat"]
    assert data[4:8] == b"ftyp"
    assert mp4_problem(data[:8]) is None
    # the movie header says 5 s at 1000 units a second
    mvhd = data.index(b"mvhd")
    timescale, duration = struct.unpack(">II", data[mvhd + 16 : mvhd + 24])
    assert duration / timescale == 5.0


def test_each_sample_of_a_task_is_its_own_file_and_the_same_inputs_the_same_bytes() -> None:
    assert render_mp4("p", 1, 1, 5.0) == render_mp4("p", 1, 1, 5.0)
    assert render_mp4("p", 1, 1, 5.0) != render_mp4("p", 1, 2, 5.0)
    assert render_mp4("p", 1, 1, 5.0) != render_mp4("p", 2, 1, 5.0)


def test_a_body_without_an_ftyp_box_at_offset_4_is_no_mp4_and_says_what_it_starts_with() -> None:
    assert mp4_problem(b"\x00\x00\x00\x18ftypisom") is None
    assert mp4_problem(b"\x89PNG\r\n\x1a\n") == (
        "not an MP4: no 'ftyp' box at offset 4 (the first 8 bytes are 89504e470d0a1a0a)"
    )
    assert mp4_problem(b"ftypisom\x00\x00\x02\x00") is not None  # 'ftyp' at 0, not at 4
    assert mp4_problem(b"") == "not an MP4: no 'ftyp' box at offset 4 (the first 0 bytes are none)"


def test_only_an_mp4_result_is_checked_on_disk(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nrest")
    mp4 = tmp_path / "a.mp4"
    mp4.write_bytes(render_mp4("p", 1, 1, 5.0))

    assert media_problem(png, IMAGE) is None
    assert media_problem(mp4, MP4_MEDIA) is None
    assert (media_problem(png, MP4_MEDIA) or "").startswith("not an MP4")


def test_a_draft_result_lists_every_sample_and_a_cache_for_each() -> None:
    body = {
        "id": "t",
        "status": "Ready",
        "result": {
            "sample": "https://d/1.mp4",
            RESULT_SAMPLES_FIELD: ["https://d/1.mp4", "https://d/2.mp4"],
            RESULT_DRAFT_CACHES_FIELD: ["https://d/draft/1", "https://d/draft/2"],
            RESULT_DRAFT_CACHE_FIELD: "https://d/draft/1",
        },
    }

    result = parse_result(body)

    assert result.sample_url == "https://d/1.mp4"
    assert result.samples == ("https://d/1.mp4", "https://d/2.mp4")
    assert result.draft_caches == ("https://d/draft/1", "https://d/draft/2")


def test_a_plain_result_is_its_one_sample_and_a_single_draft_cache_counts() -> None:
    plain = parse_result({"id": "t", "status": "Ready", "result": {"sample": "https://d/1"}})
    assert (plain.samples, plain.draft_caches) == (("https://d/1",), ())
    one = parse_result(
        {"status": "Ready", "result": {"sample": "s", RESULT_DRAFT_CACHE_FIELD: "https://d/c"}}
    )
    assert one.draft_caches == ("https://d/c",)
    pending = parse_result({"id": "t", "status": "Pending", "result": None})
    assert (pending.samples, pending.draft_caches) == ((), ())


def test_samples_are_named_name_then_name_2_and_so_on(tmp_path: Path) -> None:
    first = tmp_path / "clip.mp4"
    assert [p.name for p in sample_paths(first, 3)] == ["clip.mp4", "clip-2.mp4", "clip-3.mp4"]
    assert sample_paths(first, 1) == [first]


def test_a_drafts_sidecar_fields_give_the_cache_a_draft_enhance_job_sends() -> None:
    samples = Samples(("u1", "u2"), ("c1", "c2"), fetched_at_s=1000.0)
    assert samples.sidecar() == {
        "draft_cache": "c1",
        "draft_caches": ["c1", "c2"],
        "draft_cache_valid_until": 1000.0 + 7200.0,
    }
    assert Samples(("u1",)).sidecar() == {}
    assert Samples(("u1",), note="gone").sidecar() == {"samples_note": "gone"}


def test_a_video_has_its_own_larger_download_bound_and_a_longer_poll_deadline() -> None:
    settings = load_settings(bfl_api_key="k" * 20, poll_deadline_s=900.0)

    assert download_bound(settings, IMAGE) == (64 * 1024 * 1024, "FLUXQ_DOWNLOAD_MAX_BYTES")
    assert download_bound(settings, MP4_MEDIA) == (
        VIDEO_DOWNLOAD_MAX_BYTES,
        "FLUXQ_VIDEO_DOWNLOAD_MAX_BYTES",
    )
    assert settings.download_max_bytes < VIDEO_DOWNLOAD_MAX_BYTES
    assert settings.poll_deadline_s_for(IMAGE) == 900.0
    assert settings.poll_deadline_s_for(MP4_MEDIA) == 900.0 * VIDEO_POLL_DEADLINE_FACTOR
    assert settings.endpoint_caps["flux-3-video"] == 5


def test_the_simulators_draft_cache_urls_verify_until_they_expire() -> None:
    secret = b"s" * 32
    url = sign_draft_cache(secret, "http://127.0.0.1:9/", "ab-12", 2, expires_at=100.0)

    assert read_draft_cache(secret, url, now=99.0) == ("ab-12", 2)
    assert read_draft_cache(secret, url, now=100.0) == "draft cache has expired"
    assert read_draft_cache(b"t" * 32, url, now=99.0) == "draft cache signature does not match"
    assert read_draft_cache(secret, "https://e.com/x", now=0.0) == "not a draft cache URL"


def test_a_video_may_stay_pending_longer_than_an_image_before_its_poll_gives_up() -> None:
    settings = load_settings(bfl_api_key=KEY, poll_deadline_s=100.0)
    rt = SimpleNamespace(settings=settings)
    video = SimpleNamespace(endpoint="flux-3-video")
    image = SimpleNamespace(endpoint="flux-dev")
    gone = SimpleNamespace(endpoint="an-endpoint-the-catalog-no-longer-has")
    assert poll_deadline_s(rt, image) == 100.0  # type: ignore[arg-type]
    assert poll_deadline_s(rt, gone) == 100.0  # type: ignore[arg-type]
    assert poll_deadline_s(rt, video) == 100.0 * VIDEO_POLL_DEADLINE_FACTOR  # type: ignore[arg-type]
    assert VIDEO_POLL_DEADLINE_FACTOR > 1
