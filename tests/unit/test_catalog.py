"""Specifications of the endpoint catalog: request validation, output sizes and formats, prices."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxq.config.catalog import (
    CATALOG,
    PerImage,
    PerMegapixel,
    estimate_credits,
    get_endpoint,
    input_megapixels,
    output_format,
    output_megapixels,
    output_size,
    request_to_json,
    validate_request,
)
from fluxq.config.errors import InvalidRequest
from fluxq.config.requests import (
    FLUX2_MAX_MEGAPIXELS,
    FLUX2_MIN_SIDE_PX,
    FLUX2_SIDE_MULTIPLE_PX,
    PIXELS_PER_MEGAPIXEL,
    PROMPT_MAX_CHARS,
    FluxKontextProInputs,
    FluxPro11Inputs,
    FluxProInputs,
)

B64 = "aGVsbG8="  # any string: image fields are not decoded


def invalid_fields(endpoint: str, body: Any) -> tuple[str, ...]:
    """The field names InvalidRequest reports for ``body``; fails the test if it is accepted."""
    with pytest.raises(InvalidRequest) as caught:
        validate_request(endpoint, body)
    return caught.value.fields


VALID = [
    ("flux-pro-1.1", {}),
    ("flux-pro-1.1", {"prompt": "a cat", "width": 1440, "height": 256, "seed": 7}),
    ("flux-pro-1.1", {"prompt": None, "output_format": "webp", "safety_tolerance": 6}),
    ("flux-dev", {"prompt": "a cat", "steps": 1, "guidance": 5, "width": 512, "height": 512}),
    ("flux-dev", {"steps": None, "guidance": None}),
    ("flux-pro", {"prompt": "a cat", "steps": 50, "guidance": 1.5, "interval": 4}),
    ("flux-pro-1.1-ultra", {"prompt": "a cat", "aspect_ratio": "21:9", "raw": True}),
    ("flux-pro-1.1-ultra", {"image_prompt": B64, "image_prompt_strength": 1}),
    ("flux-pro-1.1-ultra-finetuned", {"finetune_id": "me/lora", "finetune_strength": 2}),
    ("flux-pro-1.0-fill", {"image": B64, "mask": B64, "steps": 15, "guidance": 100}),
    ("flux-pro-1.0-expand", {"image": B64, "top": 2048, "bottom": 0, "left": None}),
    ("flux-pro-1.0-fill-finetuned", {"finetune_id": "f", "image": B64, "finetune_strength": 0}),
    ("flux-kontext-pro", {"prompt": "make it blue", "input_image": "https://x.test/a.png"}),
    ("flux-kontext-max", {"prompt": "p", "aspect_ratio": "9:21", "input_image_4": B64}),
    ("flux-2-pro", {"prompt": "p", "width": 1440, "height": 1440, "input_image_8": B64}),
    ("flux-2-pro", {"prompt": "p", "width": 64, "height": 0, "safety_tolerance": 5}),
    ("flux-2-max", {"prompt": "p", "width": None, "height": None}),
    ("flux-2-pro-preview", {"prompt": "p", "webhook_url": "https://hooks.example.com/bfl"}),
    ("flux-2-flex", {"prompt": "p", "steps": 1, "guidance": 10, "prompt_upsampling": None}),
    ("flux-2-klein-4b", {"prompt": "p", "input_image_4": B64}),
    ("flux-2-klein-9b", {"prompt": "p", "width": 2048, "height": 2048}),
    ("flux-2-klein-9b-preview", {"prompt": "p", "seed": None}),
]

INVALID = [
    ("flux-pro-1.1", {"width": 1000}, "width"),
    ("flux-pro-1.1", {"width": 1472}, "width"),
    ("flux-pro-1.1", {"height": 224}, "height"),
    ("flux-pro-1.1", {"safety_tolerance": 7}, "safety_tolerance"),
    ("flux-pro-1.1", {"output_format": "gif"}, "output_format"),
    ("flux-pro-1.1", {"webhook_url": ""}, "webhook_url"),
    ("flux-pro-1.1", {"webhook_url": "https://x.test/" + "a" * 2070}, "webhook_url"),
    ("flux-pro-1.1", {"webhook_url": "ftp://x.test/hook"}, "webhook_url"),
    ("flux-dev", {"steps": 0}, "steps"),
    ("flux-dev", {"guidance": 5.5}, "guidance"),
    ("flux-dev", {"prompt": None}, "prompt"),
    ("flux-pro", {"interval": 4.5}, "interval"),
    ("flux-pro", {"steps": 51}, "steps"),
    ("flux-pro-1.1-ultra", {"image_prompt_strength": 1.5}, "image_prompt_strength"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "22:9"}, "aspect_ratio"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": None}, "aspect_ratio"),
    ("flux-pro-1.1-ultra-finetuned", {}, "finetune_id"),
    ("flux-pro-1.1-ultra-finetuned", {"finetune_id": "f", "raw": True}, "raw"),
    ("flux-pro-1.0-fill", {}, "image"),
    ("flux-pro-1.0-fill", {"image": B64, "steps": 14}, "steps"),
    ("flux-pro-1.0-fill", {"image": B64, "guidance": 101}, "guidance"),
    ("flux-pro-1.0-expand", {"image": B64, "right": 2049}, "right"),
    ("flux-pro-1.0-expand", {"image": B64, "mask": B64}, "mask"),
    ("flux-pro-1.0-fill-finetuned", {"finetune_id": "f", "image": B64, "steps": None}, "steps"),
    (
        "flux-pro-1.0-fill-finetuned",
        {"finetune_id": "f", "image": B64, "finetune_strength": 3},
        "finetune_strength",
    ),
    ("flux-kontext-pro", {}, "prompt"),
    ("flux-kontext-max", {"prompt": "p", "aspect_ratio": "wide"}, "aspect_ratio"),
    ("flux-kontext-pro", {"prompt": "p", "input_image_5": B64}, "input_image_5"),
    ("flux-2-pro", {}, "prompt"),
    ("flux-2-pro", {"prompt": "p", "width": 48}, "width"),
    ("flux-2-pro", {"prompt": "p", "height": 1000}, "height"),
    ("flux-2-pro", {"prompt": "p", "safety_tolerance": 6}, "safety_tolerance"),
    ("flux-2-max", {"prompt": "p", "steps": 20}, "steps"),
    ("flux-2-flex", {"prompt": "p", "guidance": 11}, "guidance"),
    ("flux-2-flex", {"prompt": "p", "steps": 0}, "steps"),
    ("flux-2-klein-4b", {"prompt": "p", "input_image_5": B64}, "input_image_5"),
    ("flux-2-klein-9b", {"prompt": "p", "width": -16}, "width"),
]


@pytest.mark.parametrize(("endpoint", "body"), VALID)
def test_a_valid_body_becomes_the_endpoints_request_model(
    endpoint: str, body: dict[str, Any]
) -> None:
    request = validate_request(endpoint, body)

    assert isinstance(request, CATALOG[endpoint].request_model)


@pytest.mark.parametrize(("endpoint", "body", "field"), INVALID)
def test_an_invalid_body_is_refused_naming_the_bad_field(
    endpoint: str, body: dict[str, Any], field: str
) -> None:
    assert invalid_fields(endpoint, body) == (field,)


def test_flux_pro_11_rejects_a_width_that_is_not_a_multiple_of_32() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request("flux-pro-1.1", {"width": 1000})

    assert caught.value.errors[0].loc == ("body", "width")
    assert "multiple of 32" in caught.value.errors[0].msg


def test_every_bad_field_is_named_not_only_the_first() -> None:
    body = {"width": 1000, "height": 2000, "steps": 99}

    assert set(invalid_fields("flux-dev", body)) == {"width", "height", "steps"}


def test_the_message_names_the_endpoint_and_every_bad_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request("flux-dev", {"width": 1000, "guidance": 9})

    message = str(caught.value)
    assert message.startswith("invalid request for flux-dev")
    assert "width" in message
    assert "guidance" in message


def test_an_unknown_field_such_as_a_typo_is_refused_by_name() -> None:
    assert invalid_fields("flux-pro-1.1", {"widht": 1024}) == ("widht",)


def test_a_body_that_is_not_an_object_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="invalid request for flux-dev"):
        validate_request("flux-dev", ["not", "an", "object"])  # type: ignore[arg-type]


def test_an_unknown_endpoint_is_refused_naming_the_endpoint_field_and_the_known_ones() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request("flux-pro-9", {})

    assert caught.value.fields == ("endpoint",)
    assert "flux-pro-1.1" in str(caught.value)
    assert "flux-2-pro" in str(caught.value)


@pytest.mark.parametrize(
    ("ratio", "accepted"),
    [
        ("21:9", True),
        ("9:21", True),
        ("1:1", True),
        ("16:9", True),
        ("42:18", True),
        ("22:9", False),
        ("9:22", False),
        ("0:1", False),
        ("1:0", False),
        ("16/9", False),
        ("16:9:1", False),
        (" 16:9", False),
        ("1.5:1", False),
        ("-1:1", False),
        ("", False),
    ],
)
def test_an_aspect_ratio_must_be_whole_w_colon_h_between_9_21_and_21_9(
    ratio: str, accepted: bool
) -> None:
    for endpoint, body in [
        ("flux-pro-1.1-ultra", {"aspect_ratio": ratio}),
        ("flux-kontext-pro", {"prompt": "p", "aspect_ratio": ratio}),
    ]:
        if accepted:
            validate_request(endpoint, body)
        else:
            with pytest.raises(InvalidRequest, match="aspect_ratio") as caught:
                validate_request(endpoint, body)
            assert caught.value.fields == ("aspect_ratio",)


@pytest.mark.parametrize(
    ("width", "height", "accepted"),
    [
        (2048, 2048, True),
        (4096, 1024, True),
        (4096, 0, True),
        (0, 4096, True),
        (2048, 2064, False),
        (8192, None, False),
        (4096, 4096, False),
    ],
)
def test_flux2_allows_at_most_4_megapixels(width: int, height: int | None, accepted: bool) -> None:
    body = {"prompt": "p", "width": width, "height": height}

    if accepted:
        validate_request("flux-2-pro", body)
    else:
        with pytest.raises(InvalidRequest, match=r"at most 4\.0 MP"):
            validate_request("flux-2-pro", body)


def test_flux2_takes_0_as_server_picks_although_the_spec_minimum_is_64() -> None:
    request = validate_request("flux-2-pro", {"prompt": "p", "width": 0, "height": 0})

    assert output_size("flux-2-pro", request) == (1024, 1024)


@pytest.mark.parametrize(
    ("endpoint", "body", "credits"),
    [
        ("flux-pro-1.1", {}, 4.0),
        ("flux-pro-1.1-ultra", {"raw": True}, 6.0),
        ("flux-kontext-pro", {"prompt": "p"}, 4.0),
        ("flux-kontext-max", {"prompt": "p"}, 8.0),
        ("flux-pro-1.0-fill", {"image": B64}, 5.0),
        ("flux-pro-1.0-expand", {"image": B64, "top": 512}, 5.0),
        ("flux-pro-1.1-ultra-finetuned", {"finetune_id": "f"}, 7.0),
        ("flux-pro-1.0-fill-finetuned", {"finetune_id": "f", "image": B64}, 6.0),
        ("flux-dev", {}, 2.5),
        ("flux-pro", {}, 5.0),
        ("flux-2-pro", {"prompt": "p", "width": 1440, "height": 1440}, 4.5),
        ("flux-2-pro", {"prompt": "p"}, 3.0),
        ("flux-2-pro-preview", {"prompt": "p", "width": 1024, "height": 1024}, 3.0),
        ("flux-2-pro", {"prompt": "p", "input_image": B64, "input_image_2": B64}, 6.0),
        ("flux-2-max", {"prompt": "p"}, 7.0),
        ("flux-2-max", {"prompt": "p", "width": 2048, "height": 2048}, 16.0),
        ("flux-2-flex", {"prompt": "p", "width": 1440, "height": 1440}, 10.0),
        ("flux-2-klein-4b", {"prompt": "p"}, 1.4),
        ("flux-2-klein-4b", {"prompt": "p", "width": 1024, "height": 1040}, 1.5),
        ("flux-2-klein-9b", {"prompt": "p", "width": 2048, "height": 2048}, 2.1),
        ("flux-2-klein-9b-preview", {"prompt": "p", "input_image": "https://x.test/a"}, 1.7),
    ],
)
def test_estimated_credits_follow_bfls_price_list(
    endpoint: str, body: dict[str, Any], credits: float
) -> None:
    request = validate_request(endpoint, body)

    assert estimate_credits(endpoint, request) == pytest.approx(credits)


def test_flux_pro_11_at_1440x1440_is_1_98_bfl_megapixels() -> None:
    assert output_megapixels(1440, 1440) == 1.98
    assert output_megapixels(1024, 1024) == 1.0


@pytest.mark.parametrize(
    ("endpoint", "body", "megapixels"),
    [
        ("flux-2-pro", {"prompt": "p"}, 0.0),
        ("flux-2-pro", {"prompt": "p", "input_image": B64, "input_image_8": B64}, 2.0),
        ("flux-kontext-pro", {"prompt": "p", "input_image": B64}, 1.0),
        ("flux-pro-1.0-fill", {"image": B64, "mask": B64}, 1.0),
        ("flux-pro-1.1-ultra", {"image_prompt": B64}, 1.0),
    ],
)
def test_each_given_input_image_counts_as_one_megapixel(
    endpoint: str, body: dict[str, Any], megapixels: float
) -> None:
    assert input_megapixels(validate_request(endpoint, body)) == megapixels


@pytest.mark.parametrize(
    ("endpoint", "body", "size"),
    [
        ("flux-pro-1.1", {}, (1024, 768)),
        ("flux-pro", {}, (1024, 768)),
        ("flux-dev", {"width": 512, "height": 1440}, (512, 1440)),
        ("flux-2-pro", {"prompt": "p"}, (1024, 1024)),
        ("flux-2-klein-4b", {"prompt": "p", "width": 512, "height": None}, (512, 1024)),
        ("flux-2-flex", {"prompt": "p", "width": 1440, "height": 1440}, (1440, 1440)),
        ("flux-pro-1.1-ultra", {"aspect_ratio": "1:1"}, (2048, 2048)),
        ("flux-pro-1.1-ultra", {}, (2720, 1536)),
        ("flux-pro-1.1-ultra-finetuned", {"finetune_id": "f", "aspect_ratio": "1:1"}, (2048, 2048)),
        ("flux-kontext-pro", {"prompt": "p"}, (1024, 1024)),
        ("flux-kontext-max", {"prompt": "p", "aspect_ratio": "16:9"}, (1376, 768)),
        ("flux-pro-1.0-fill", {"image": B64}, (1024, 1024)),
        (
            "flux-pro-1.0-expand",
            {"image": B64, "top": 100, "left": 32, "right": None},
            (1056, 1124),
        ),
    ],
)
def test_output_size_applies_defaults_and_ratios(
    endpoint: str, body: dict[str, Any], size: tuple[int, int]
) -> None:
    assert output_size(endpoint, validate_request(endpoint, body)) == size


@pytest.mark.parametrize("ratio", ["21:9", "9:21", "16:9", "4:3", "7:5", "1:1"])
def test_sizes_from_an_aspect_ratio_are_multiples_of_32_near_the_target(ratio: str) -> None:
    request = validate_request("flux-pro-1.1-ultra", {"aspect_ratio": ratio})

    width, height = output_size("flux-pro-1.1-ultra", request)

    assert width % 32 == 0
    assert height % 32 == 0
    assert output_megapixels(width, height) == pytest.approx(4.0, rel=0.05)


def test_output_size_refuses_a_request_of_another_endpoint() -> None:
    with pytest.raises(TypeError):
        output_size("flux-2-pro", FluxPro11Inputs())


@pytest.mark.parametrize(
    ("endpoint", "body", "fmt"),
    [
        ("flux-pro-1.1", {}, "jpeg"),
        ("flux-2-pro", {"prompt": "p"}, "jpeg"),
        ("flux-kontext-pro", {"prompt": "p"}, "png"),
        ("flux-kontext-max", {"prompt": "p", "output_format": None}, "png"),
        ("flux-dev", {"output_format": None}, "jpeg"),
        ("flux-dev", {"output_format": "webp"}, "webp"),
        ("flux-kontext-pro", {"prompt": "p", "output_format": "jpeg"}, "jpeg"),
    ],
)
def test_output_format_is_the_requests_or_the_endpoints_default(
    endpoint: str, body: dict[str, Any], fmt: str
) -> None:
    assert output_format(validate_request(endpoint, body)) == fmt


def test_request_to_json_leaves_out_unset_and_none_fields_but_keeps_explicit_values() -> None:
    body = {"prompt": "p", "width": 0, "height": 1024, "seed": None, "output_format": "png"}
    request = validate_request("flux-2-pro", body)

    assert request_to_json(request) == {
        "prompt": "p",
        "width": 0,
        "height": 1024,
        "output_format": "png",
    }


def test_request_to_json_of_an_empty_body_is_empty() -> None:
    assert request_to_json(validate_request("flux-pro-1.1", {})) == {}


def test_request_to_json_keeps_the_webhook_url_exactly_as_given() -> None:
    body = {"webhook_url": "https://hooks.example.com"}

    assert request_to_json(validate_request("flux-dev", body)) == body


def test_the_catalog_describes_caps_schemas_prices_and_sizing() -> None:
    assert get_endpoint("flux-kontext-max").cap_group == "flux-kontext-max"
    assert get_endpoint("flux-kontext-pro").cap_group is None
    assert get_endpoint("flux-kontext-max").request_model is FluxKontextProInputs
    assert get_endpoint("flux-pro").request_model is FluxProInputs
    assert get_endpoint("flux-pro").schema_name is None
    assert get_endpoint("flux-pro-1.1").schema_name == "FluxPro11Inputs"
    assert get_endpoint("flux-2-pro").price == PerMegapixel(3.0, 1.5)
    assert get_endpoint("flux-pro-1.0-expand").price == PerImage(5.0)
    assert {s.sizing for s in CATALOG.values()} == {"pixels", "aspect_ratio", "image"}


def sides(low: int, high: int, multiple: int) -> st.SearchStrategy[int]:
    """Any integer near the range, or (so that some pass) a multiple of ``multiple`` in it."""
    aligned = st.integers(low // multiple, high // multiple).map(lambda k: k * multiple)
    return st.one_of(st.integers(low - 100, high + 100), aligned)


@settings(database=None, max_examples=300)
@given(width=sides(0, 1600, 32), height=sides(0, 1600, 32))
def test_flux_pro_11_accepts_exactly_the_multiples_of_32_from_256_to_1440(
    width: int, height: int
) -> None:
    expected = all(side % 32 == 0 and 256 <= side <= 1440 for side in (width, height))
    try:
        request = validate_request("flux-pro-1.1", {"width": width, "height": height})
    except InvalidRequest:
        assert not expected
    else:
        assert expected
        assert output_size("flux-pro-1.1", request) == (width, height)


@settings(database=None, max_examples=300)
@given(width=sides(0, 4200, 16), height=sides(0, 4200, 16))
def test_flux2_accepts_exactly_0_or_aligned_sides_up_to_4_megapixels(
    width: int, height: int
) -> None:
    def side_ok(side: int) -> bool:
        return side == 0 or (side >= FLUX2_MIN_SIDE_PX and side % FLUX2_SIDE_MULTIPLE_PX == 0)

    pixels = (width or 1024) * (height or 1024)
    expected = side_ok(width) and side_ok(height)
    expected = expected and pixels <= FLUX2_MAX_MEGAPIXELS * PIXELS_PER_MEGAPIXEL
    body = {"prompt": "p", "width": width, "height": height}
    try:
        validate_request("flux-2-pro", body)
    except InvalidRequest:
        assert not expected
    else:
        assert expected


# --- the prompt's length: fluxq's bound, since BFL's spec states none -------------------------

REQUIRED_BESIDES_PROMPT = {"image": B64, "finetune_id": "f", "mode": "t2v"}


def with_prompt(endpoint: str, prompt: str) -> dict[str, Any]:
    required = CATALOG[endpoint].request_model.model_json_schema().get("required", [])
    return {"prompt": prompt} | {k: v for k, v in REQUIRED_BESIDES_PROMPT.items() if k in required}


@pytest.mark.parametrize("endpoint", sorted(CATALOG))
def test_every_endpoint_refuses_a_prompt_over_its_bound_naming_prompt_and_the_bound(
    endpoint: str,
) -> None:
    bound = CATALOG[endpoint].prompt_max_chars
    assert bound == PROMPT_MAX_CHARS

    validate_request(endpoint, with_prompt(endpoint, "é" * bound))  # characters, not bytes
    with pytest.raises(InvalidRequest) as caught:
        validate_request(endpoint, with_prompt(endpoint, "a" * (bound + 1)))

    assert caught.value.fields == ("prompt",)
    assert f"{bound}" in str(caught.value)


def test_a_20_mb_prompt_is_refused_without_its_text_in_the_error() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request("flux-2-pro", {"prompt": "x" * 20_000_000})

    assert caught.value.fields == ("prompt",)
    assert len(str(caught.value)) < 200
