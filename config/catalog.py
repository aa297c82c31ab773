"""The catalog of BFL generation endpoints: request model, price, nested cap and sizing of each.

Validates a request body for an endpoint and estimates its output size and price in credits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.requests import (
    PIXELS_PER_MEGAPIXEL,
    FinetuneFluxProFillInputs,
    FinetuneFluxUltraInput,
    Flux2FlexInputs,
    Flux2Inputs,
    Flux2KleinInputs,
    FluxDevInputs,
    FluxKontextProInputs,
    FluxPro11Inputs,
    FluxProExpandInputs,
    FluxProFillInputs,
    FluxProInputs,
    FluxUltraInput,
    OutputFormat,
    flux2_size,
    parse_aspect_ratio,
)

ULTRA_MEGAPIXELS = 4.0
"""Approximate Ultra output size in BFL megapixels (BFL: "4 MP"); the exact size is BFL's choice."""

KONTEXT_MEGAPIXELS = 1.0
"""Approximate Kontext output size in BFL megapixels (BFL: "1 MP")."""

KONTEXT_DEFAULT_ASPECT_RATIO = "1:1"
"""Assumed Kontext ratio when aspect_ratio is unset (BFL may follow the input image instead)."""

ASPECT_SIZE_MULTIPLE_PX = 32
"""Sizes estimated from an aspect ratio are rounded to multiples of this many pixels."""

FILL_ASSUMED_SIDE_PX = 1024
"""Assumed side of a fill/expand input image: its real size would mean decoding the base64 image."""

ASSUMED_INPUT_IMAGE_MEGAPIXELS = 1.0
"""Megapixels assumed per given input image: URLs and base64 images are too costly to measure."""

NOT_UTF8 = (
    "holds a lone surrogate (\\ud800-\\udfff, half of a character), which cannot be sent as "
    "UTF-8 JSON"
)
"""Why a string that does not encode as UTF-8 is refused. Only a lone surrogate does not: JSON's
``"\\ud800"`` escape reads as one (valid JSON), and so do argv bytes that are not UTF-8; httpx
sends JSON as UTF-8, so the POST would fail at submit, after the job was queued."""

Sizing = Literal["pixels", "aspect_ratio", "image"]


@dataclass(frozen=True)
class PerImage:
    """A flat price per generated image."""

    credits: float


@dataclass(frozen=True)
class PerMegapixel:
    """FLUX.2 pricing: the first output megapixel, then each extra output or input megapixel."""

    first_mp_credits: float
    extra_mp_credits: float


PriceRule = PerImage | PerMegapixel


@dataclass(frozen=True)
class EndpointSpec:
    """One generation endpoint: ``POST /v1/<endpoint>``."""

    endpoint: str
    request_model: type[BaseModel]
    schema_name: str | None
    price: PriceRule
    cap_group: str | None
    sizing: Sizing
    prompt_max_chars: int | None
    """The longest ``prompt`` the request model accepts (``PROMPT_MAX_CHARS``), None if none."""


def _spec(
    endpoint: str,
    model: type[BaseModel],
    price: PriceRule,
    sizing: Sizing,
    *,
    cap_group: str | None = None,
) -> EndpointSpec:
    schema_name = None if model is FluxProInputs else model.__name__
    prompt_max = _max_length(model, "prompt")
    return EndpointSpec(endpoint, model, schema_name, price, cap_group, sizing, prompt_max)


def _max_length(model: type[BaseModel], name: str) -> int | None:
    """The ``max_length`` a field of ``model`` is declared with (in its non-null branch when it
    is nullable: ``Prompt | None``), None when it has none."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    found = [*field.metadata]
    for branch in get_args(field.annotation):  # Annotated[str, Field(...)] | None
        for item in getattr(branch, "__metadata__", ()):
            found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    bounds = [b for item in found if (b := getattr(item, "max_length", None)) is not None]
    return min(bounds, default=None)


# Per-image prices are BFL's (API.md section 7; 1 credit = $0.01). flux-pro-1.0-expand is not on
# BFL's price list: we charge it like fill (5), whose model and schema shape it shares.
_SPECS = (
    _spec("flux-pro-1.1", FluxPro11Inputs, PerImage(4.0), "pixels"),
    _spec("flux-dev", FluxDevInputs, PerImage(2.5), "pixels"),
    _spec("flux-pro", FluxProInputs, PerImage(5.0), "pixels"),
    _spec("flux-pro-1.1-ultra", FluxUltraInput, PerImage(6.0), "aspect_ratio"),
    _spec("flux-pro-1.1-ultra-finetuned", FinetuneFluxUltraInput, PerImage(7.0), "aspect_ratio"),
    _spec("flux-kontext-pro", FluxKontextProInputs, PerImage(4.0), "aspect_ratio"),
    _spec(
        "flux-kontext-max",
        FluxKontextProInputs,
        PerImage(8.0),
        "aspect_ratio",
        cap_group="flux-kontext-max",
    ),
    _spec("flux-pro-1.0-fill", FluxProFillInputs, PerImage(5.0), "image"),
    _spec("flux-pro-1.0-expand", FluxProExpandInputs, PerImage(5.0), "image"),
    _spec("flux-pro-1.0-fill-finetuned", FinetuneFluxProFillInputs, PerImage(6.0), "image"),
    _spec("flux-2-max", Flux2Inputs, PerMegapixel(7.0, 3.0), "pixels"),
    _spec("flux-2-pro", Flux2Inputs, PerMegapixel(3.0, 1.5), "pixels"),
    _spec("flux-2-pro-preview", Flux2Inputs, PerMegapixel(3.0, 1.5), "pixels"),
    _spec("flux-2-flex", Flux2FlexInputs, PerMegapixel(5.0, 5.0), "pixels"),
    _spec("flux-2-klein-4b", Flux2KleinInputs, PerMegapixel(1.4, 0.1), "pixels"),
    _spec("flux-2-klein-9b", Flux2KleinInputs, PerMegapixel(1.5, 0.2), "pixels"),
    _spec("flux-2-klein-9b-preview", Flux2KleinInputs, PerMegapixel(1.5, 0.2), "pixels"),
)

CATALOG: Mapping[str, EndpointSpec] = MappingProxyType({s.endpoint: s for s in _SPECS})
"""Every generation endpoint of BFL's openapi.json, plus the legacy ``flux-pro``."""

_ASPECT_MEGAPIXELS: Mapping[type[BaseModel], float] = {
    FluxUltraInput: ULTRA_MEGAPIXELS,
    FinetuneFluxUltraInput: ULTRA_MEGAPIXELS,
    FluxKontextProInputs: KONTEXT_MEGAPIXELS,
}


def get_endpoint(endpoint: str) -> EndpointSpec:
    """The spec of ``endpoint``; raise InvalidRequest naming field ``endpoint`` if it is unknown."""
    try:
        return CATALOG[endpoint]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        error = FieldError(loc=("endpoint",), msg=f"unknown endpoint {endpoint!r}; known: {known}")
        raise InvalidRequest("unknown endpoint", errors=[error]) from None


def validate_request(endpoint: str, data: Mapping[str, Any]) -> BaseModel:
    """Validate a JSON body for ``endpoint``; raise InvalidRequest naming every bad field.

    Values must have the JSON type BFL's spec (and fluxq's published schemas) give them: ``0``
    is no boolean, ``"1024"`` no width; ``6.0`` is the integer 6, as JSON Schema reads it. A
    body JSON cannot hold (a lone surrogate, NaN, a Python object) is read as Python would, for
    the errors only that reading names.
    """
    model = get_endpoint(endpoint).request_model
    message = f"invalid request for {endpoint}"
    if not isinstance(data, Mapping):
        error = FieldError(("body",), f"expected a JSON object, got {type(data).__name__}")
        raise InvalidRequest(message, errors=[error])
    problems = _json_type_errors(model, data)
    if not problems:
        try:
            return model.model_validate(dict(data))
        except ValidationError as exc:
            problems = exc.errors()
    errors = [error for e in problems for error in _field_errors(e, data)]
    raise InvalidRequest(message, errors=errors)


def _json_type_errors(model: type[BaseModel], data: Mapping[str, Any]) -> list[ErrorDetails]:
    """The errors of values of another JSON type than their field's, which pydantic's lax
    reading would take (``0`` as false, ``"6"`` as 6); a whole float is an integer."""
    try:
        text = json.dumps(dict(data), allow_nan=False)  # a lone surrogate stays an escape
    except (TypeError, ValueError, RecursionError):
        return []  # no JSON: the lax reading names what is wrong
    try:
        model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return []  # a lone surrogate: the lax reading names the field
        return [e for e in errors if not _whole_float(e)]
    return []


def _whole_float(error: ErrorDetails) -> bool:
    value = error.get("input")
    return error["type"] == "int_type" and isinstance(value, float) and value.is_integer()


def _field_errors(error: ErrorDetails, data: Mapping[str, Any]) -> list[FieldError]:
    """fluxq's errors for one of pydantic's. A string pydantic cannot read (a lone surrogate)
    is said as fluxq says it; one in a key fails the whole body, so the key is named instead."""
    if error["type"] != "string_unicode":
        return [FieldError(("body", *error["loc"]), error["msg"])]
    if error["loc"]:
        return [FieldError(("body", *error["loc"]), NOT_UTF8)]
    keys = [key for key in data if isinstance(key, str) and not _is_utf8(key)]
    return [FieldError(("body", escape_surrogates(key)), NOT_UTF8) for key in keys] or [
        FieldError(("body",), NOT_UTF8)
    ]


def output_size(endpoint: str, request: BaseModel) -> tuple[int, int]:
    """The (width, height) in pixels BFL will produce for ``request``, with defaults applied."""
    spec = get_endpoint(endpoint)
    if not isinstance(request, spec.request_model):
        raise TypeError(f"{endpoint} takes {spec.request_model.__name__}, not {type(request)}")
    if spec.sizing == "aspect_ratio":
        return _size_from_aspect_ratio(request)
    if spec.sizing == "image":
        return _size_from_image(request)
    # FLUX.1 sides are never 0 or None, so FLUX.2's "server picks" rule leaves them alone.
    return flux2_size(getattr(request, "width", None), getattr(request, "height", None))


def _size_from_aspect_ratio(request: BaseModel) -> tuple[int, int]:
    # BFL only says "about N MP": we spread N MP over the ratio and round to multiples of 32.
    ratio = getattr(request, "aspect_ratio", None) or KONTEXT_DEFAULT_ASPECT_RATIO
    ratio_w, ratio_h = parse_aspect_ratio(ratio)
    pixels = _ASPECT_MEGAPIXELS[type(request)] * PIXELS_PER_MEGAPIXEL
    width = math.sqrt(pixels * ratio_w / ratio_h)
    height = math.sqrt(pixels * ratio_h / ratio_w)
    return _round_to_multiple(width), _round_to_multiple(height)


def _round_to_multiple(side_px: float) -> int:
    return max(1, math.floor(side_px / ASPECT_SIZE_MULTIPLE_PX + 0.5)) * ASPECT_SIZE_MULTIPLE_PX


def _size_from_image(request: BaseModel) -> tuple[int, int]:
    # Fill/expand follow the input image, which we do not decode: assume 1024x1024, plus margins.
    def margin(name: str) -> int:
        return int(getattr(request, name, 0) or 0)

    width = FILL_ASSUMED_SIDE_PX + margin("left") + margin("right")
    return width, FILL_ASSUMED_SIDE_PX + margin("top") + margin("bottom")


def output_megapixels(width: int, height: int) -> float:
    """BFL megapixels of a width x height image: pixels / 2**20, rounded to 2 decimals."""
    return round(width * height / PIXELS_PER_MEGAPIXEL, 2)


def input_megapixels(request: BaseModel) -> float:
    """Megapixels of the input images: each given one counts as 1 MP (they are not measured).

    Input images are ``image``, ``image_prompt`` and every ``input_image*`` field (flex's
    ``input_image_blob_path`` included); an overestimate is the safe side for a budget.
    """
    given = [name for name, value in request if value is not None and _is_input_image_field(name)]
    return len(given) * ASSUMED_INPUT_IMAGE_MEGAPIXELS


def _is_input_image_field(name: str) -> bool:
    # "mask" is left out: it describes the input image rather than adding one.
    return name in ("image", "image_prompt") or name.startswith("input_image")


def estimate_credits(endpoint: str, request: BaseModel) -> float:
    """Estimated price of ``request`` in credits; the submit response's ``cost`` is the real one."""
    price = get_endpoint(endpoint).price
    if isinstance(price, PerImage):
        return float(price.credits)
    out_mp = output_megapixels(*output_size(endpoint, request))
    # BFL's formula is linear, but its own example (flux-2-pro, 1.98 MP out -> 4.5 credits, not
    # 4.47) only fits if each extra megapixel, output or input, is charged whole: we round them up.
    extra_out_mp = math.ceil(round(max(0.0, out_mp - 1), 6))
    extra_in_mp = math.ceil(round(input_megapixels(request), 6))
    credits = price.first_mp_credits + (extra_out_mp + extra_in_mp) * price.extra_mp_credits
    return float(round(credits, 2))


def output_format(request: BaseModel) -> str:
    """The image format BFL will return: the request's, else the schema's default (Kontext: png)."""
    chosen = getattr(request, "output_format", None)
    if chosen is None:
        chosen = type(request).model_fields["output_format"].default
    return OutputFormat(chosen).value


def request_to_json(request: BaseModel) -> dict[str, Any]:
    """The JSON body to POST: unset and None fields are left out, so BFL applies its defaults.

    It may still hold a string that does not encode as UTF-8 (``not_utf8_at`` finds it)."""
    return request.model_dump(mode="json", exclude_unset=True, exclude_none=True)


def escape_surrogates(text: str) -> str:
    """``text`` with each lone surrogate written as its ``\\udXXX`` escape: for a key an error
    names, or an error's text, which must be printed, logged, stored and sent as UTF-8."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def not_utf8_at(value: object) -> tuple[str | int, ...] | None:
    """Where the first string of a JSON value (a key or a value) that does not encode as UTF-8
    is, such as ``("prompt",)`` or ``("kwargs", "tags", 2)``; None when every string encodes.

    Cheap when there is none: an ASCII string (most) is checked without encoding it."""
    if isinstance(value, str):
        return None if _is_utf8(value) else ()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and not _is_utf8(key):
                return (escape_surrogates(key),)
            found = not_utf8_at(item)
            if found is not None:
                return (escape_surrogates(str(key)), *found)
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = not_utf8_at(item)
            if found is not None:
                return (index, *found)
    return None


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
