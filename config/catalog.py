"""The catalog of BFL generation endpoints: request model, price, nested cap and sizing of each.

Its table is data (``endpoints.toml``, read by ``fluxq.config.endpoints``), and a process's
settings add the endpoints a user declares (``catalog_with``, ``Settings.catalog``). Validates a
request body for an endpoint and estimates its output size and price in credits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from fluxq.config.endpoint_spec import IMAGE

# The spec and its price rules are the catalog's names too: the simulator, the CLI and tests
# import them from here.
from fluxq.config.endpoint_spec import EndpointSpec as EndpointSpec
from fluxq.config.endpoint_spec import PerImage as PerImage
from fluxq.config.endpoint_spec import PerMegapixel as PerMegapixel
from fluxq.config.endpoint_spec import Unpriced as Unpriced
from fluxq.config.endpoints import read_builtin, read_declared
from fluxq.config.errors import FieldError, InvalidRequest
from fluxq.config.requests import (
    PIXELS_PER_MEGAPIXEL,
    RESERVED_FIELDS,
    FinetuneFluxUltraInput,
    FluxKontextProInputs,
    FluxUltraInput,
    OpenRequest,
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
"""Assumed side of an input image (fill, expand, the FLUX Tools): its real size would mean
decoding the base64 image."""

ASSUMED_INPUT_IMAGE_MEGAPIXELS = 1.0
"""Megapixels assumed per given input image: URLs and base64 images are too costly to measure."""
ASSUMED_INPUT_SIDE_PX = 1024
"""The side of the square an input image is quoted as: 1024 x 1024 px is 1 MP."""

NOT_UTF8 = (
    "holds a lone surrogate (\\ud800-\\udfff, half of a character), which cannot be sent as "
    "UTF-8 JSON"
)
"""Why a string that does not encode as UTF-8 is refused. Only a lone surrogate does not: JSON's
``"\\ud800"`` escape reads as one (valid JSON), and so do argv bytes that are not UTF-8; httpx
sends JSON as UTF-8, so the POST would fail at submit, after the job was queued."""

RESERVED_FIELD_TEXT = (
    "fluxq sets this field itself (webhook mode), so a request for an endpoint whose fields "
    "fluxq does not know may not hold it; fluxq's own webhook is the job's webhook_url option"
)
"""Why a request for an open endpoint may not hold one of ``RESERVED_FIELDS``."""

Catalog = Mapping[str, EndpointSpec]
"""Endpoints by path: ``CATALOG``, or a process's ``Settings.catalog`` (with declared ones)."""


class _Table(Mapping[str, EndpointSpec]):
    """A read-only table of endpoints in the order given. Not a ``MappingProxyType``: Settings
    holds one, and settings pickle and copy."""

    def __init__(self, specs: Iterable[EndpointSpec]) -> None:
        self._specs = {spec.endpoint: spec for spec in specs}

    def __getitem__(self, endpoint: str) -> EndpointSpec:
        return self._specs[endpoint]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


CATALOG: Catalog = _Table(read_builtin())
"""fluxq's own endpoints: every generation endpoint of BFL's openapi.json, the legacy
``flux-pro``, and the FLUX Tools (preview). Declared endpoints are in ``Settings.catalog``."""

_ASPECT_MEGAPIXELS: Mapping[type[BaseModel], float] = {
    FluxUltraInput: ULTRA_MEGAPIXELS,
    FinetuneFluxUltraInput: ULTRA_MEGAPIXELS,
    FluxKontextProInputs: KONTEXT_MEGAPIXELS,
}


def catalog_with(path: Path | None) -> Catalog:
    """``CATALOG`` plus the endpoints declared in ``path`` (FLUXQ_ENDPOINTS_FILE), after fluxq's
    own; ConfigError names the file, and each bad entry with its field."""
    if path is None:
        return CATALOG
    return _Table([*CATALOG.values(), *read_declared(path, CATALOG)])


def get_endpoint(endpoint: str, *, catalog: Catalog = CATALOG) -> EndpointSpec:
    """The spec of ``endpoint``; raise InvalidRequest naming field ``endpoint`` if it is unknown.

    ``catalog`` is the process's (``Settings.catalog``) wherever a declared endpoint may come."""
    try:
        return catalog[endpoint]
    except KeyError:
        known = ", ".join(sorted(catalog))
        error = FieldError(loc=("endpoint",), msg=f"unknown endpoint {endpoint!r}; known: {known}")
        raise InvalidRequest("unknown endpoint", errors=[error]) from None


def validate_request(
    endpoint: str, data: Mapping[str, Any], *, catalog: Catalog = CATALOG
) -> BaseModel:
    """Validate a JSON body for ``endpoint``; raise InvalidRequest naming every bad field.

    Values must have the JSON type BFL's spec (and fluxq's published schemas) give them: ``0``
    is no boolean, ``"1024"`` no width; ``6.0`` is the integer 6, as JSON Schema reads it. A
    body JSON cannot hold (a lone surrogate, NaN, a Python object) is read as Python would, for
    the errors only that reading names. An open endpoint's body is any JSON object (its
    ``prompt`` bounded); what it may not hold is the producers' to refuse
    (``reserved_fields_in``), since BFL's side takes those fields.
    """
    model = get_endpoint(endpoint, catalog=catalog).request_model
    message = f"invalid request for {endpoint}"
    if not isinstance(data, Mapping):
        error = FieldError(("body",), f"expected a JSON object, got {type(data).__name__}")
        raise InvalidRequest(message, errors=[error])
    if model is OpenRequest and (problem := _not_a_json_object(data)) is not None:
        raise InvalidRequest(message, errors=[FieldError(("body",), problem)])
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


def _not_a_json_object(data: Mapping[Any, Any]) -> str | None:
    """Why ``data`` is not a JSON object (a key that is no string, NaN, a Python object, nesting
    too deep for the encoder), or None: an open body is sent as given, so it must be JSON."""
    bad_keys = [key for key in data if not isinstance(key, str)]
    if bad_keys:
        return f"a JSON object's keys are strings, not {type(bad_keys[0]).__name__}"
    try:
        json.dumps(dict(data), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"not a JSON object: {exc}"
    except RecursionError:
        return "not a JSON object we send: nested too deeply"
    return None


def reserved_fields_in(spec: EndpointSpec, request: Mapping[str, Any]) -> list[str]:
    """The fields of ``RESERVED_FIELDS`` a request for an open endpoint holds (null too): fluxq
    sets them itself. None for an endpoint it knows, whose model says what it takes."""
    return [field for field in RESERVED_FIELDS if field in request] if spec.open else []


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


def output_size(
    endpoint: str, request: BaseModel, *, catalog: Catalog = CATALOG
) -> tuple[int, int]:
    """The (width, height) in pixels BFL will produce for ``request``, with defaults applied."""
    spec = get_endpoint(endpoint, catalog=catalog)
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
    # An open body's margins are whatever it holds: only whole numbers count.
    def margin(name: str) -> int:
        value = getattr(request, name, None)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

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


def estimate_credits(endpoint: str, request: BaseModel, *, catalog: Catalog = CATALOG) -> float:
    """Estimated price of ``request`` in credits; the submit response's ``cost`` is the real one.
    An unpriced endpoint's estimate is 0 (``EndpointSpec.price`` says it is unpriced)."""
    price = get_endpoint(endpoint, catalog=catalog).price
    if isinstance(price, Unpriced):
        return 0.0
    if isinstance(price, PerImage):
        return float(price.credits)
    out_mp = output_megapixels(*output_size(endpoint, request, catalog=catalog))
    return megapixel_credits(price, out_mp, input_megapixels(request))


@dataclass(frozen=True, order=True)
class PriceShape:
    """What BFL's ``POST /v1/pricing`` needs to quote one FLUX.2 image: the output size and the
    input images (each taken as ``ASSUMED_INPUT_SIDE_PX`` square: fluxq does not decode them)."""

    endpoint: str
    width: int
    height: int
    inputs: int

    def table_credits(self, *, catalog: Catalog = CATALOG) -> float:
        """The catalog's price of this shape (the same formula ``estimate_credits`` uses)."""
        price = get_endpoint(self.endpoint, catalog=catalog).price
        assert isinstance(price, PerMegapixel)
        out_mp = output_megapixels(self.width, self.height)
        return megapixel_credits(price, out_mp, self.inputs * ASSUMED_INPUT_IMAGE_MEGAPIXELS)


def price_shape(
    endpoint: str, request: BaseModel, *, catalog: Catalog = CATALOG
) -> PriceShape | None:
    """The shape BFL would quote ``request`` by; None unless the endpoint is priced per
    megapixel (BFL's pricing endpoint quotes FLUX.2 only)."""
    if not isinstance(get_endpoint(endpoint, catalog=catalog).price, PerMegapixel):
        return None
    width, height = output_size(endpoint, request, catalog=catalog)
    inputs = sum(1 for name, value in request if value is not None and _is_input_image_field(name))
    return PriceShape(endpoint, width, height, inputs)


def megapixel_credits(price: PerMegapixel, out_mp: float, in_mp: float) -> float:
    """A FLUX.2 price: the first output megapixel, then each further megapixel, out or in."""
    # BFL's formula is linear, but its own example (flux-2-pro, 1.98 MP out -> 4.5 credits, not
    # 4.47) only fits if each extra megapixel, output or input, is charged whole: we round them up.
    extra_out_mp = math.ceil(round(max(0.0, out_mp - 1), 6))
    extra_in_mp = math.ceil(round(in_mp, 6))
    credits = price.first_mp_credits + (extra_out_mp + extra_in_mp) * price.extra_mp_credits
    return float(round(credits, 2))


def output_format(request: BaseModel) -> str:
    """The image format BFL will return: the request's, else the schema's default (Kontext: png).
    An open body's ``output_format`` counts when it names a format; else BFL's usual jpeg."""
    chosen = getattr(request, "output_format", None)
    if isinstance(request, OpenRequest):
        return _format_named(chosen)
    if chosen is None:
        chosen = type(request).model_fields["output_format"].default
    return OutputFormat(chosen).value


def _format_named(chosen: object) -> str:
    """The format an open body's ``output_format`` names, else BFL's usual jpeg."""
    known = {fmt.value for fmt in OutputFormat}
    return chosen if isinstance(chosen, str) and chosen in known else OutputFormat.JPEG.value


def result_suffix(endpoint: str, request: Mapping[str, Any], *, catalog: Catalog) -> str:
    """The file suffix of a stored request's result when its URL tells none: an image's format
    (``output_format``), else the media type's subtype (``video/mp4``: mp4). An endpoint this
    process does not know (declared where the job was enqueued, not here) is read as open."""
    spec = catalog.get(endpoint)
    if spec is None:
        return _format_named(request.get("output_format"))
    if spec.media != IMAGE:
        return spec.media.rpartition("/")[2]
    return output_format(validate_request(endpoint, request, catalog=catalog))


def request_to_json(request: BaseModel) -> dict[str, Any]:
    """The JSON body to POST: unset and None fields are left out, so BFL applies its defaults.
    An open body is sent as given, its nulls too (fluxq does not know what they mean).

    It may still hold a string that does not encode as UTF-8 (``not_utf8_at`` finds it)."""
    exclude_none = not isinstance(request, OpenRequest)
    return request.model_dump(mode="json", exclude_unset=True, exclude_none=exclude_none)


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
