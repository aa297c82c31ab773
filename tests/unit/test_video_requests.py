"""FLUX 3 video's request model: each mode and its fields, as BFL's strict schema has them.

Every refusal is an InvalidRequest naming the field, before anything is sent (BFL: 422).
"""

from __future__ import annotations

from typing import Any

import pytest

from fluxq.config.catalog import CATALOG, request_to_json, validate_request
from fluxq.config.errors import InvalidRequest
from fluxq.config.requests import (
    KEYFRAME_MAX_CHARS,
    VIDEO_COMMON_FIELDS,
    VIDEO_MODE_FIELDS,
    Flux3VideoInputs,
)

VIDEO = "flux-3-video"
IMAGE_URL = "https://example.com/frame.png"

VALID: dict[str, dict[str, Any]] = {
    "t2v": {"mode": "t2v", "prompt": "a fox at dawn", "aspect_ratio": "16:9", "duration": 5},
    "i2v": {"mode": "i2v", "prompt": "the camera pushes in", "keyframes": IMAGE_URL},
    "v2v": {"mode": "v2v", "prompt": "the rider goes on", "start_video": "https://e.com/a.mp4"},
    "draft_enhance": {"mode": "draft_enhance", "draft_cache": "https://e.com/draft/1"},
}
"""One valid body per mode (BFL's own examples, shortened)."""

A_VALUE: dict[str, Any] = {
    "prompt": "p",
    "keyframes": IMAGE_URL,
    "start_video": "https://e.com/a.mp4",
    "draft_cache": "https://e.com/draft/1",
    "aspect_ratio": "1:1",
    "resolution": "hd",
    "duration": 10,
    "generate_audio": False,
    "version": "latest",
    "draft": True,
    "batch": 2,
}
"""A valid value of each mode-bound field, to give it where its mode does not take it."""


def refusal(body: dict[str, Any]) -> dict[tuple[str | int, ...], str]:
    """The errors validating ``body`` raises, by location."""
    with pytest.raises(InvalidRequest) as caught:
        validate_request(VIDEO, body)
    return {error.loc: error.msg for error in caught.value.errors}


def refused_fields(body: dict[str, Any]) -> set[tuple[str | int, ...]]:
    """The ``("body", field)`` of each error (a union's errors go on to name its branch)."""
    return {loc[:2] for loc in refusal(body)}


@pytest.mark.parametrize("mode", sorted(VALID))
def test_each_mode_with_its_fields_is_accepted_and_sent_as_given(mode: str) -> None:
    model = validate_request(VIDEO, VALID[mode])

    assert isinstance(model, Flux3VideoInputs)
    # only what was given is sent: BFL applies its own defaults (generate_audio true, ...)
    assert request_to_json(model) == VALID[mode]


def test_the_catalog_entry_is_a_preview_mp4_endpoint_in_its_own_cap_class() -> None:
    spec = CATALOG[VIDEO]
    assert spec.request_model is Flux3VideoInputs
    assert (spec.media, spec.url_lifetime_s, spec.cap_class) == ("video/mp4", 7200, VIDEO)
    assert (spec.status, spec.price.text(), spec.schema_name) == ("preview", "unpriced", None)


@pytest.mark.parametrize(
    ("mode", "field"),
    [
        (mode, field)
        for mode in sorted(VIDEO_MODE_FIELDS)
        for field in sorted(A_VALUE)
        if field not in VIDEO_MODE_FIELDS[mode]
    ],
)
def test_a_field_outside_its_mode_is_refused_by_name(mode: str, field: str) -> None:
    body = {**VALID[mode], field: A_VALUE[field]}

    errors = refusal(body)

    assert f"{field} is not a field of mode {mode}" in errors[("body", field)]


def test_a_field_outside_its_mode_is_refused_even_when_null() -> None:
    errors = refusal({**VALID["t2v"], "start_video": None})
    assert "start_video is not a field of mode t2v" in errors[("body", "start_video")]


def test_draft_enhance_takes_no_generation_setting_at_all() -> None:
    assert VIDEO_MODE_FIELDS["draft_enhance"] == {"draft_cache"}
    for field in VIDEO_COMMON_FIELDS:
        assert ("body", field) in refusal({**VALID["draft_enhance"], field: A_VALUE[field]})


@pytest.mark.parametrize(
    ("body", "needs"),
    [
        ({"mode": "t2v"}, "prompt"),
        ({"mode": "i2v", "prompt": "p"}, "keyframes"),
        ({"mode": "i2v"}, "prompt and keyframes"),
        ({"mode": "v2v", "prompt": "p"}, "start_video"),
        ({"mode": "draft_enhance"}, "draft_cache"),
    ],
)
def test_a_mode_without_its_required_fields_is_refused_naming_them(
    body: dict[str, Any], needs: str
) -> None:
    errors = refusal(body)
    assert errors == {("body",): f"mode {body['mode']} needs {needs}"}


def test_an_unknown_field_and_an_unknown_mode_are_refused() -> None:
    assert ("body", "seed") in refusal({**VALID["t2v"], "seed": 1})  # BFL's video has no seed
    assert ("body", "output_format") in refusal({**VALID["t2v"], "output_format": "png"})
    assert ("body", "mode") in refusal({"mode": "i2i", "prompt": "p"})
    assert ("body", "mode") in refusal({"prompt": "p"})


def test_batch_is_taken_only_with_draft_true() -> None:
    assert validate_request(VIDEO, {**VALID["t2v"], "draft": True, "batch": 4})
    assert refusal({**VALID["t2v"], "batch": 2}) == {("body", "batch"): "batch 2 needs draft: true"}
    assert ("body", "batch") in refusal({**VALID["t2v"], "draft": False, "batch": 1})
    assert ("body", "batch") in refusal({**VALID["t2v"], "draft": True, "batch": 5})
    assert ("body", "batch") in refusal({**VALID["t2v"], "draft": True, "batch": 0})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aspect_ratio", "3:2"),
        ("resolution", "4k"),
        ("duration", 4),
        ("duration", 21),
        ("duration", 7.5),
        ("duration", "5"),
        ("generate_audio", "yes"),
        ("version", ""),
        ("draft", 1),
    ],
)
def test_a_common_setting_out_of_its_range_is_refused_by_name(field: str, value: Any) -> None:
    assert refused_fields({**VALID["t2v"], field: value}) == {("body", field)}


@pytest.mark.parametrize(
    "keyframes",
    [
        IMAGE_URL,
        [IMAGE_URL],
        [IMAGE_URL, "aGVsbG8="],
        [[0, IMAGE_URL], [4.5, IMAGE_URL], [10, IMAGE_URL]],
        [[0, IMAGE_URL], [1 / 24, IMAGE_URL]],
    ],
)
def test_keyframes_of_each_documented_shape_are_accepted(keyframes: Any) -> None:
    body = {**VALID["i2v"], "keyframes": keyframes, "duration": 10}
    assert validate_request(VIDEO, body)


def test_three_to_ten_waypoints_need_an_explicit_duration() -> None:
    body = {**VALID["i2v"], "keyframes": [IMAGE_URL] * 3}

    assert "need an explicit duration" in refusal(body)[("body", "keyframes")]
    assert validate_request(VIDEO, {**body, "duration": 8})
    assert validate_request(VIDEO, {**body, "keyframes": [IMAGE_URL] * 10, "duration": 8})
    assert (
        "at most 10"
        in refusal({**body, "keyframes": [IMAGE_URL] * 11, "duration": 8})[("body", "keyframes")]
    )


@pytest.mark.parametrize(
    ("keyframes", "why"),
    [
        ([], "at least 1 image"),
        ([[0, IMAGE_URL], IMAGE_URL], "mixes images and [seconds, image] pairs"),
        ([[0, IMAGE_URL], [0.01, IMAGE_URL]], "at least 1/24 s after 0"),
        ([[2, IMAGE_URL], [1, IMAGE_URL]], "at least 1/24 s after 2"),
        ([[-1, IMAGE_URL]], "outside the duration"),
        ([[0, IMAGE_URL], [10.5, IMAGE_URL]], "outside the duration (0-10 s)"),
        ([[0, IMAGE_URL, "extra"]], "must be [seconds, image]"),
        ([[True, IMAGE_URL]], "its time must be a number"),
    ],
)
def test_timed_keyframes_break_a_rule_are_refused_saying_which(keyframes: Any, why: str) -> None:
    errors = refusal({**VALID["i2v"], "keyframes": keyframes, "duration": 10})
    assert why in errors[("body", "keyframes")]


def test_timed_keyframes_need_an_explicit_duration() -> None:
    body = {**VALID["i2v"], "keyframes": [[0, IMAGE_URL], [2, IMAGE_URL]], "duration": "auto"}
    assert "need an explicit duration" in refusal(body)[("body", "keyframes")]


def test_an_empty_or_oversized_keyframe_image_is_refused() -> None:
    assert refused_fields({**VALID["i2v"], "keyframes": ""}) == {("body", "keyframes")}
    huge = "a" * (KEYFRAME_MAX_CHARS + 1)
    assert refused_fields({**VALID["i2v"], "keyframes": huge}) == {("body", "keyframes")}
