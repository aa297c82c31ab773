"""Pydantic models of BFL's generation request bodies, one per schema of BFL's ``openapi.json``.

They mirror the spec's names, defaults, bounds and nullability; stricter checks are named constants.
"""

from __future__ import annotations

import re
from enum import StrEnum
from fractions import Fraction
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fluxq.config.video import base64_chars

PIXELS_PER_MEGAPIXEL = 2**20
"""BFL's megapixel, in pixels: its ``output_mp`` for 1440x1440 is 1.98, so 1 MP = 2**20 pixels."""

FLUX2_MIN_SIDE_PX = 64
"""Smallest FLUX.2 width/height in pixels. The spec says 64, the help centre 256; we keep the spec's
64: it is what BFL's server validates, and refusing 64..255 could refuse requests BFL accepts."""

FLUX2_SIDE_MULTIPLE_PX = 16
"""FLUX.2 width/height must be multiples of this (help centre, not in the spec); BFL rejects others,
so we refuse them before a request is sent."""

FLUX2_MAX_MEGAPIXELS = 4.0
"""Largest FLUX.2 output in BFL megapixels (help centre, not the spec): width x height limit."""

FLUX2_DEFAULT_SIDE_PX = 1024
"""FLUX.2 width/height 0 or null means "server picks": 1024 (help centre). Assumption: each side
defaults on its own, so width=512 with height unset is taken as 512x1024."""

PROMPT_MAX_CHARS = 10_000
"""Longest prompt fluxq accepts, in characters (Unicode code points), for every endpoint. BFL's
spec states no maxLength on any prompt field, so this is fluxq's own bound, and generous: the
text encoders read a few hundred tokens (FLUX.1's T5: 512), and 10,000 characters are some
2,500 of them. Without it a 20 MB prompt was queued, stored in Redis and POSTed to BFL."""

RESERVED_FIELDS = ("webhook_url", "webhook_secret")
"""Request fields fluxq itself puts in a POST: webhook mode sends the job's own ``webhook_url``
and the key's ``webhook_secret`` (``tasks/submit.webhook_fields``). A request for an open endpoint
(``OpenRequest``) may hold neither, in any form, so what fluxq sends never mixes with what it was
given; an endpoint fluxq knows takes BFL's ``webhook_url`` as its model says (a secret never:
``workers/files.SECRET_FIELDS``)."""

MIN_ASPECT_RATIO = (9, 21)
"""Narrowest aspect ratio (width, height) BFL accepts for Ultra and Kontext, inclusive."""

MAX_ASPECT_RATIO = (21, 9)
"""Widest aspect ratio (width, height) BFL accepts for Ultra and Kontext, inclusive."""

_ASPECT_RATIO_RE = re.compile(r"(\d+):(\d+)", re.ASCII)
_ASPECT_RATIO_RANGE = "{}:{}..{}:{}".format(*MIN_ASPECT_RATIO, *MAX_ASPECT_RATIO)
_ASPECT_RATIO_FORMAT = "aspect_ratio must be 'W:H' with whole numbers >= 1"


class OutputFormat(StrEnum):
    """The spec's ``OutputFormat`` enum."""

    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"


def parse_aspect_ratio(text: str) -> tuple[int, int]:
    """Parse ``"W:H"`` into ``(W, H)``; raise ``ValueError`` naming aspect_ratio when malformed."""
    match = _ASPECT_RATIO_RE.fullmatch(text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"{_ASPECT_RATIO_FORMAT}, got {text!r}")
    return int(match[1]), int(match[2])


def _check_aspect_ratio(text: str) -> str:
    try:
        width, height = parse_aspect_ratio(text)
    except ValueError:
        raise PydanticCustomError(
            "aspect_ratio", _ASPECT_RATIO_FORMAT + ", got {value}", {"value": repr(text)}
        ) from None
    if not Fraction(*MIN_ASPECT_RATIO) <= Fraction(width, height) <= Fraction(*MAX_ASPECT_RATIO):
        raise PydanticCustomError(
            "aspect_ratio",
            "aspect_ratio {ratio} is outside {range}",
            {"ratio": text, "range": _ASPECT_RATIO_RANGE},
        )
    return text


# format uri + minLength 1 + maxLength 2083 is exactly the schema of pydantic's HttpUrl, so that is
# what BFL's server checks; we check the same but keep the caller's string as is (no trailing /).
_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _check_webhook_url(url: str) -> str:
    try:
        _HTTP_URL.validate_python(url)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        error = PydanticCustomError("url", "not an http(s) URL: {reason}", {"reason": reason})
        raise error from None
    return url


def flux2_size(width: int | None, height: int | None) -> tuple[int, int]:
    """FLUX.2 output size in pixels: a side that is 0 or None is picked by the server (1024)."""
    return width or FLUX2_DEFAULT_SIDE_PX, height or FLUX2_DEFAULT_SIDE_PX


AspectRatio = Annotated[str, AfterValidator(_check_aspect_ratio)]
Prompt = Annotated[str, Field(max_length=PROMPT_MAX_CHARS)]
WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=2083, json_schema_extra={"format": "uri"}),
    AfterValidator(_check_webhook_url),
]
Flux1Side = Annotated[int, Field(ge=256, le=1440, multiple_of=32)]
Flux2Side = Annotated[int, Field(ge=FLUX2_MIN_SIDE_PX, multiple_of=FLUX2_SIDE_MULTIPLE_PX)]
Flux1Steps = Annotated[int, Field(ge=1, le=50)]
FillSteps = Annotated[int, Field(ge=15, le=50)]
FillGuidance = Annotated[float, Field(ge=1.5, le=100)]
ExpandMargin = Annotated[int, Field(ge=0, le=2048)]
Strength = Annotated[float, Field(ge=0, le=1)]
FinetuneStrength = Annotated[float, Field(ge=0, le=2)]


class BflRequest(BaseModel):
    """Fields every generation schema has. The base of every request model."""

    # BFL probably ignores unknown fields (FastAPI's default). We reject them: a typo such as
    # "widht" silently ignored would spend credits on an image nobody asked for.
    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    output_format: OutputFormat | None = OutputFormat.JPEG
    webhook_url: WebhookUrl | None = None
    # Kept for fidelity with the spec; the producer layer refuses it (secrets never enter a job).
    webhook_secret: str | None = None


class _Flux1Request(BflRequest):
    safety_tolerance: Annotated[int, Field(ge=0, le=6)] = 2


class FluxPro11Inputs(_Flux1Request):
    """``POST /v1/flux-pro-1.1``."""

    prompt: Prompt | None = ""
    image_prompt: str | None = None
    width: Flux1Side = 1024
    height: Flux1Side = 768
    prompt_upsampling: bool = False


class FluxDevInputs(_Flux1Request):
    """``POST /v1/flux-dev``."""

    prompt: Prompt = ""
    image_prompt: str | None = None
    width: Flux1Side = 1024
    height: Flux1Side = 768
    steps: Flux1Steps | None = 28
    prompt_upsampling: bool = False
    guidance: Annotated[float, Field(ge=1.5, le=5)] | None = 3.0


class FluxProInputs(_Flux1Request):
    """``POST /v1/flux-pro``: FLUX.1 [pro] of 2024, not in the 2026 spec (API.md, seed docs)."""

    prompt: Prompt | None = ""
    image_prompt: str | None = None
    width: Flux1Side = 1024
    height: Flux1Side = 768
    steps: Flux1Steps | None = 40
    prompt_upsampling: bool = False
    guidance: Annotated[float, Field(ge=1.5, le=5)] | None = 2.5
    interval: Annotated[float, Field(ge=1, le=4)] | None = 2.0


class _UltraRequest(_Flux1Request):
    prompt: Prompt | None = ""
    prompt_upsampling: bool = False
    aspect_ratio: AspectRatio = "16:9"
    image_prompt: str | None = None
    image_prompt_strength: Strength = 0.1


class FluxUltraInput(_UltraRequest):
    """``POST /v1/flux-pro-1.1-ultra``."""

    raw: bool = False


class FinetuneFluxUltraInput(_UltraRequest):
    """``POST /v1/flux-pro-1.1-ultra-finetuned``."""

    finetune_id: str
    finetune_strength: FinetuneStrength = 1.2


class _FillRequest(_Flux1Request):
    image: str
    prompt: Prompt | None = ""
    steps: FillSteps | None = 50
    prompt_upsampling: bool | None = False
    guidance: FillGuidance | None = 60


class FluxProFillInputs(_FillRequest):
    """``POST /v1/flux-pro-1.0-fill``."""

    mask: str | None = None


class FluxProExpandInputs(_FillRequest):
    """``POST /v1/flux-pro-1.0-expand``."""

    top: ExpandMargin | None = 0
    bottom: ExpandMargin | None = 0
    left: ExpandMargin | None = 0
    right: ExpandMargin | None = 0


class FinetuneFluxProFillInputs(_Flux1Request):
    """``POST /v1/flux-pro-1.0-fill-finetuned``: like fill, but steps/guidance are not nullable."""

    finetune_id: str
    finetune_strength: FinetuneStrength = 1.1
    image: str
    mask: str | None = None
    prompt: Prompt = ""
    steps: FillSteps = 50
    prompt_upsampling: bool = False
    guidance: FillGuidance = 60


class FluxKontextProInputs(_Flux1Request):
    """``POST /v1/flux-kontext-pro`` and ``/v1/flux-kontext-max``."""

    prompt: Prompt
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: AspectRatio | None = None
    output_format: OutputFormat | None = OutputFormat.PNG
    prompt_upsampling: bool = False


class _Flux2Request(BflRequest):
    prompt: Prompt
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    width: Flux2Side | None = 0
    height: Flux2Side | None = 0
    safety_tolerance: Annotated[int, Field(ge=0, le=5)] = 2

    @field_validator("width", "height", mode="wrap")
    @classmethod
    def _zero_means_server_picks(
        cls, value: object, handler: ValidatorFunctionWrapHandler
    ) -> object:
        # The spec's own default, 0, is below its minimum of 64: 0 means "server picks 1024".
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            return 0
        return handler(value)

    # A model-level check: the error belongs to no single field (loc ("body",)), so its message
    # names both width and height.
    @model_validator(mode="after")
    def _at_most_max_megapixels(self) -> Self:
        width, height = flux2_size(self.width, self.height)
        if width * height > FLUX2_MAX_MEGAPIXELS * PIXELS_PER_MEGAPIXEL:
            raise PydanticCustomError(
                "flux2_too_large",
                "width x height {width}x{height} is {mp} MP; FLUX.2 allows at most {max} MP",
                {
                    "width": width,
                    "height": height,
                    "mp": round(width * height / PIXELS_PER_MEGAPIXEL, 2),
                    "max": FLUX2_MAX_MEGAPIXELS,
                },
            )
        return self


class Flux2KleinInputs(_Flux2Request):
    """``POST /v1/flux-2-klein-4b``, ``-9b`` and ``-9b-preview``: up to 4 input images."""


class _Flux2EightImagesRequest(_Flux2Request):
    input_image_5: str | None = None
    input_image_6: str | None = None
    input_image_7: str | None = None
    input_image_8: str | None = None


class Flux2Inputs(_Flux2EightImagesRequest):
    """``POST /v1/flux-2-pro``, ``-pro-preview`` and ``-max``: up to 8 input images."""


class Flux2FlexInputs(_Flux2EightImagesRequest):
    """``POST /v1/flux-2-flex``: adds steps, guidance and prompt upsampling."""

    prompt_upsampling: bool | None = True
    input_image_blob_path: str | None = None
    guidance: Annotated[float, Field(ge=1.5, le=10)] | None = 5.0
    steps: Flux1Steps | None = 50


class OpenRequest(BaseModel):
    """Any JSON object: the body of an endpoint whose fields fluxq does not know (a FLUX Tool, a
    declared endpoint), sent as given. Only ``prompt`` is checked, as on every endpoint."""

    # BFL's side (the simulator) takes any field here, webhook_url and webhook_secret included;
    # fluxq's producers refuse RESERVED_FIELDS before this model (catalog.reserved_fields_in).
    # The prompt's bound keeps a 20 MB text out of Redis whatever the endpoint.
    model_config = ConfigDict(extra="allow")

    prompt: Prompt | None = None


# --- FLUX 3 video: newer than the OpenAPI copy (BFL's FLUX 3 video API reference) --------------

VideoMode = Literal["t2v", "i2v", "v2v", "draft_enhance"]
"""``mode``: text, image(s), or a video to video; or a chosen draft rendered at full quality."""

VIDEO_COMMON_FIELDS = (
    "aspect_ratio",
    "resolution",
    "duration",
    "generate_audio",
    "version",
    "draft",
    "batch",
)
"""The settings every generating mode takes (t2v, i2v, v2v); draft_enhance takes none."""

VIDEO_MODE_FIELDS: dict[str, frozenset[str]] = {
    "t2v": frozenset({"prompt", *VIDEO_COMMON_FIELDS}),
    "i2v": frozenset({"prompt", "keyframes", *VIDEO_COMMON_FIELDS}),
    "v2v": frozenset({"prompt", "start_video", *VIDEO_COMMON_FIELDS}),
    "draft_enhance": frozenset({"draft_cache"}),
}
"""The fields each mode takes, besides ``mode`` and the webhook fields: BFL's schema is strict,
"a field outside its mode or an unknown field returns 422", so fluxq refuses one before sending."""

VIDEO_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "t2v": ("prompt",),
    "i2v": ("prompt", "keyframes"),
    "v2v": ("prompt", "start_video"),
    "draft_enhance": ("draft_cache",),
}
"""The fields each mode needs (BFL's table of modes)."""

KEYFRAME_MAX_IMAGES = 10
"""At most 10 keyframes: 1 pins the opening frame, 2 opening and closing, 3-10 are waypoints.
Timed ``[seconds, image]`` pairs are held to the same 10 (BFL states no count for them)."""

KEYFRAME_MIN_GAP_S = 1 / 24
"""Timed keyframes must be at least one frame (1/24 s) apart."""

KEYFRAME_MAX_CHARS = base64_chars(20 * 1024 * 1024)
"""A keyframe is a URL or a base64 PNG/JPEG/WebP of at most 20 MB (BFL): its longest text."""

START_VIDEO_MAX_CHARS = base64_chars(50 * 1024 * 1024)
"""``start_video`` is a URL or a base64 MP4 of at most 50 MB (BFL): its longest text."""

VIDEO_MIN_DURATION_S = 5
VIDEO_MAX_DURATION_S = 20
"""``duration``: ``auto`` or a whole number of seconds, 5 to 20."""

KeyframeImage = Annotated[str, Field(min_length=1, max_length=KEYFRAME_MAX_CHARS)]
Keyframes = KeyframeImage | list[KeyframeImage] | list[tuple[float, KeyframeImage]]


def _keyframe_shape_error(why: str, **values: object) -> PydanticCustomError:
    return PydanticCustomError("keyframes", why, values or None)


class VideoRequest(BaseModel):
    """The base of a video body: strict, and the webhook fields fluxq's webhook mode sends
    (whether BFL's video endpoint takes them is UNCONFIRMED). No ``seed`` or ``output_format``:
    BFL's video reference names neither, and its strict schema would refuse them."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: WebhookUrl | None = None
    webhook_secret: str | None = None


class Flux3VideoInputs(VideoRequest):
    """``POST /v1/flux-3-video``: one model for the four modes, each field checked against its
    ``mode`` (declared first, so every later check knows it)."""

    mode: VideoMode
    prompt: Prompt | None = None
    duration: (
        Literal["auto"] | Annotated[int, Field(ge=VIDEO_MIN_DURATION_S, le=VIDEO_MAX_DURATION_S)]
    ) = "auto"
    keyframes: Keyframes | None = None
    start_video: Annotated[str, Field(min_length=1, max_length=START_VIDEO_MAX_CHARS)] | None = None
    draft_cache: Annotated[str, Field(min_length=1)] | None = None
    aspect_ratio: Literal["auto", "21:9", "2:1", "16:9", "4:3", "1:1", "3:4", "9:16"] = "auto"
    resolution: Literal["hd", "fhd"] | None = None
    generate_audio: bool = True
    version: Annotated[str, Field(min_length=1, max_length=64)] = "latest"
    draft: bool = False
    batch: Annotated[int, Field(ge=1, le=4)] = 1

    @field_validator("keyframes", mode="before")
    @classmethod
    def _keyframe_rules(cls, value: object, info: ValidationInfo) -> object:
        # Defined before _only_in_its_mode, so that check runs first (the last "before"
        # validator defined runs first): keyframes outside i2v are refused as such.
        if not isinstance(value, list):
            return value  # one image (a string), or a type error pydantic names
        if not value:
            raise _keyframe_shape_error("keyframes must hold at least 1 image")
        if len(value) > KEYFRAME_MAX_IMAGES:
            raise _keyframe_shape_error(
                "keyframes holds {n} images; at most {max}", n=len(value), max=KEYFRAME_MAX_IMAGES
            )
        duration = info.data.get("duration")
        timed = [item for item in value if isinstance(item, list | tuple)]
        if timed and len(timed) != len(value):
            raise _keyframe_shape_error(
                "keyframes mixes images and [seconds, image] pairs; give one kind"
            )
        if not timed:
            if len(value) >= 3 and not isinstance(duration, int):
                raise _keyframe_shape_error(
                    "{n} keyframes are waypoints, which need an explicit duration (5-20 s), "
                    "not auto",
                    n=len(value),
                )
            return value
        return _check_timed_keyframes(timed, duration)

    @field_validator(
        "prompt",
        "keyframes",
        "start_video",
        "draft_cache",
        *VIDEO_COMMON_FIELDS,
        mode="before",
    )
    @classmethod
    def _only_in_its_mode(cls, value: object, info: ValidationInfo) -> object:
        # Runs only for a field the body gives (null too): BFL answers 422 for any of them
        # outside its mode. An unreadable mode is mode's own error, not each field's.
        mode = info.data.get("mode")
        name = info.field_name
        if mode in VIDEO_MODE_FIELDS and name not in VIDEO_MODE_FIELDS[mode]:
            takes = ", ".join(sorted(VIDEO_MODE_FIELDS[mode]))
            raise PydanticCustomError(
                "field_outside_mode",
                "{field} is not a field of mode {mode} (it takes: {takes})",
                {"field": name, "mode": mode, "takes": takes},
            )
        return value

    @field_validator("batch")
    @classmethod
    def _batch_only_for_drafts(cls, value: int, info: ValidationInfo) -> int:
        # Given at all (even 1) without a draft: "batch 1-4 only with draft: true".
        if info.data.get("draft") is not True:
            raise PydanticCustomError(
                "batch_needs_draft", "batch {batch} needs draft: true", {"batch": value}
            )
        return value

    # Whole-body checks: a missing field has no value to validate. The error names the field.
    @model_validator(mode="after")
    def _mode_has_its_fields(self) -> Self:
        missing = [name for name in VIDEO_REQUIRED_FIELDS[self.mode] if getattr(self, name) is None]
        if missing:
            raise PydanticCustomError(
                "missing_for_mode",
                "mode {mode} needs {fields}",
                {"mode": self.mode, "fields": " and ".join(missing)},
            )
        return self


def _check_timed_keyframes(pairs: list[Any], duration: object) -> list[Any]:
    """``[seconds, image]`` pairs: times a number, 0 or more, increasing at least 1/24 s apart,
    within an explicit duration."""
    if not isinstance(duration, int):
        raise _keyframe_shape_error("timed keyframes need an explicit duration (5-20 s), not auto")
    previous: float | None = None
    for index, pair in enumerate(pairs):
        if len(pair) != 2:
            raise _keyframe_shape_error("keyframes[{i}] must be [seconds, image]", i=index)
        seconds = pair[0]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise _keyframe_shape_error("keyframes[{i}]: its time must be a number", i=index)
        if not 0 <= seconds <= duration:
            raise _keyframe_shape_error(
                "keyframes[{i}]: {t} s is outside the duration (0-{d} s)",
                i=index,
                t=seconds,
                d=duration,
            )
        if previous is not None and seconds - previous < KEYFRAME_MIN_GAP_S:
            raise _keyframe_shape_error(
                "keyframes[{i}]: {t} s must come at least 1/24 s after {p} s",
                i=index,
                t=seconds,
                p=previous,
            )
        previous = float(seconds)
    # As tuples: the strict check (config.catalog) reads a before-validator's result as Python,
    # where only a tuple is a tuple.
    return [tuple(pair) for pair in pairs]
