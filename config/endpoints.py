"""The endpoint table as data: fluxq's own ``endpoints.toml`` and a file a user declares more in.

Each ``[[endpoint]]`` entry becomes one ``EndpointSpec``. A file with problems is refused whole,
by one ``ConfigError`` naming the file, and each bad entry with its field.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, cast, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fluxq.config import requests
from fluxq.config.endpoint_spec import (
    DEFAULT_CAP_CLASS,
    ENDPOINT_PATTERN,
    IMAGE,
    IMAGE_URL_LIFETIME_S,
    EndpointSpec,
    PerImage,
    PerMegapixel,
    PriceRule,
    Sizing,
    Status,
    Unpriced,
)
from fluxq.config.errors import ConfigError
from fluxq.config.requests import BflRequest, OpenRequest, VideoRequest

BUILTIN_FILE = "endpoints.toml"
"""fluxq's own table: package data of ``fluxq.config``, beside this module."""

MAX_ENDPOINT_CHARS = 100
"""The longest endpoint path (BFL's longest today: 28 characters)."""

OPEN = "open"
"""``request = "open"``: the body is any JSON object (``OpenRequest``)."""

CAP_CLASS_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""A nested cap class: a part of Redis keys (``fluxq:slots:{k}:{class}``) and a name in
FLUXQ_ENDPOINT_CAPS (``class=N,...``), so no ``:``, ``,``, ``=`` or ``/``."""

MEDIA_TYPE_PATTERN = re.compile(r"[a-z]+/[a-z0-9][a-z0-9.+-]*")
"""Any other result: a media type such as ``video/mp4`` (its subtype is the file's suffix)."""

BUILTIN_STATUSES: tuple[Status, ...] = ("current", "legacy", "preview")

REQUIRED = ("path", "cap", "media", "price")
"""Fields every entry gives, in fluxq's file and in a declared one."""

REQUIRED_BUILTIN = (*REQUIRED, "request", "url_lifetime_s", "sizing", "typical_s", "status")
"""fluxq's own entries give every field but the optional ``schema`` and ``price_listed``."""

FIELDS = (*REQUIRED_BUILTIN, "schema", "price_listed")

PRICE_SHAPES = '"unpriced", { per_image = C } or { first_mp = C, extra_mp = C }'

PATH_RULE = (
    "lower-case letters, digits, '.', '_' and '-', each part starting with a letter or digit, "
    "parts joined by '/'"
)


REQUEST_MODELS: Mapping[str, type[BaseModel]] = {
    name: value
    for name, value in sorted(vars(requests).items())
    if isinstance(value, type)
    and issubclass(value, BflRequest | VideoRequest)
    and value not in (BflRequest, VideoRequest)
    and not name.startswith("_")
}
"""The request models an entry may name: every endpoint body of ``config/requests.py`` (an
image's, on ``BflRequest``, or a video's, on ``VideoRequest``)."""


def read_builtin() -> tuple[EndpointSpec, ...]:
    """fluxq's own table (``endpoints.toml``, shipped in the package)."""
    text = resources.files("fluxq.config").joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    return parse_endpoints(text, f"fluxq's {BUILTIN_FILE}")


def read_declared(path: Path, builtin: Mapping[str, EndpointSpec]) -> tuple[EndpointSpec, ...]:
    """The endpoints a user's file declares; ConfigError names the file and every problem, such
    as an entry that would redefine one of ``builtin``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_endpoints(text, str(path), builtin=builtin)


def parse_endpoints(
    text: str, source: str, *, builtin: Mapping[str, EndpointSpec] | None = None
) -> tuple[EndpointSpec, ...]:
    """The entries of an endpoints file named ``source``: fluxq's own when ``builtin`` is None,
    else a declared one, which may not redefine any of ``builtin``. ConfigError names every
    problem, each with its entry (its number, and its path when it has one) and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not TOML: {exc}") from None
    problems: list[str] = []
    specs: dict[str, EndpointSpec] = {}
    first_entry: dict[str, int] = {}
    for number, table in enumerate(_tables(data, problems), start=1):
        entry = _Entry(table, declared=builtin is not None)
        where = f"entry {number}" + (f" ({entry.path})" if entry.path else "")
        problems.extend(f"{where}: {problem}" for problem in entry.problems)
        if not entry.path:
            continue
        if entry.path in first_entry:
            problems.append(f"{where}: path: also entry {first_entry[entry.path]}'s")
        elif builtin is not None and entry.path in builtin:
            status = builtin[entry.path].status
            problems.append(
                f"{where}: path: {entry.path} is one of fluxq's own endpoints ({status}); a "
                "declared endpoint may not redefine it (use it as it is, or give another path)"
            )
        first_entry.setdefault(entry.path, number)
        if not entry.problems:
            specs[entry.path] = entry.spec
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return tuple(specs.values())


def _tables(data: Mapping[str, Any], problems: list[str]) -> list[Mapping[str, Any]]:
    """The file's ``[[endpoint]]`` tables; what else it holds goes to ``problems``."""
    for key in data:
        if key != "endpoint":
            problems.append(f"{key}: unknown; each entry is an [[endpoint]] table")
    tables = data.get("endpoint", [])
    if not isinstance(tables, list):
        problems.append("endpoint: write each entry as [[endpoint]] (an array of tables)")
        return []
    found = []
    for number, table in enumerate(tables, start=1):
        if isinstance(table, Mapping):
            found.append(table)
        else:
            problems.append(f"entry {number}: not a table: write it as [[endpoint]]")
    return found


def _number(value: object) -> float | None:
    """``value`` as a float when it is a finite number (TOML's int or float, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class _Entry:
    """One ``[[endpoint]]`` table read field by field: its ``spec``, or ``problems`` naming each
    bad field (a field that is bad reads as its default, so the others are checked too)."""

    def __init__(self, table: Mapping[str, Any], *, declared: bool) -> None:
        self._table = table
        self._declared = declared
        self.problems: list[str] = []
        required = REQUIRED if declared else REQUIRED_BUILTIN
        for name in table:
            if name not in FIELDS:
                self._bad(name, f"unknown field; known: {', '.join(FIELDS)}")
        for name in required:
            if name not in table:
                self._bad(name, "missing")
        self.path = self._path()
        model = self._request()
        media = self._media()
        self.spec = EndpointSpec(
            endpoint=self.path,
            request_model=model,
            schema_name=self._schema(),
            price=self._price(),
            cap_group=self._cap_group(),
            sizing=self._sizing(model),
            prompt_max_chars=_max_length(model, "prompt"),
            media=media,
            url_lifetime_s=self._url_lifetime_s(media),
            typical_s=self._typical_s(),
            status=self._status(),
            price_listed=self._price_listed(),
        )

    def _bad(self, field: str, why: str) -> None:
        self.problems.append(f"{field}: {why}")

    def _path(self) -> str:
        value = self._table.get("path")
        if value is None:
            return ""
        if isinstance(value, str) and value.startswith(("/", "v1/")):
            self._bad("path", f"{value!r}: give the path after /v1/, such as flux-tools/erase-v1")
            return ""
        if not isinstance(value, str) or not ENDPOINT_PATTERN.fullmatch(value):
            self._bad("path", f"{value!r} is not an endpoint path: {PATH_RULE}")
            return ""
        if len(value) > MAX_ENDPOINT_CHARS:
            self._bad("path", f"longer than {MAX_ENDPOINT_CHARS} characters")
            return ""
        return value

    def _request(self) -> type[BaseModel]:
        value = self._table.get("request", OPEN)
        if value == OPEN:
            return OpenRequest
        model = REQUEST_MODELS.get(value) if isinstance(value, str) else None
        if model is None:
            known = ", ".join([OPEN, *REQUEST_MODELS])
            self._bad("request", f"{value!r} is no request model of fluxq's; known: {known}")
            return OpenRequest
        return model

    def _schema(self) -> str | None:
        value = self._table.get("schema")
        if value is not None and not isinstance(value, str):
            self._bad("schema", "must be the name of a schema of BFL's OpenAPI document")
            return None
        return value

    def _cap_group(self) -> str | None:
        value = self._table.get("cap", DEFAULT_CAP_CLASS)
        if value == DEFAULT_CAP_CLASS:
            return None
        if not isinstance(value, str) or not CAP_CLASS_PATTERN.fullmatch(value):
            self._bad(
                "cap",
                f'{value!r}: "{DEFAULT_CAP_CLASS}" or a class name (lower-case letters, digits, '
                '".", "_", "-"; at most 64)',
            )
            return None
        return value

    def _media(self) -> str:
        value = self._table.get("media", IMAGE)
        if value == IMAGE:
            return IMAGE
        if not isinstance(value, str) or not MEDIA_TYPE_PATTERN.fullmatch(value):
            self._bad("media", f'{value!r}: "{IMAGE}" or a media type such as "video/mp4"')
            return IMAGE
        return value

    def _url_lifetime_s(self, media: str) -> float:
        value = self._table.get("url_lifetime_s")
        if value is None:
            if media != IMAGE:
                self._bad("url_lifetime_s", f"missing: needed for {media} (images: 600 s)")
            return IMAGE_URL_LIFETIME_S
        seconds = _number(value)
        if seconds is None or seconds <= 0:
            self._bad("url_lifetime_s", f"{value!r}: a number of seconds above 0")
            return IMAGE_URL_LIFETIME_S
        return seconds

    def _price(self) -> PriceRule:
        value = self._table.get("price", "unpriced")
        if value == "unpriced":
            return Unpriced()
        if isinstance(value, Mapping):
            numbers = {key: self._credits(key, credits) for key, credits in value.items()}
            if set(numbers) == {"per_image"}:
                return PerImage(numbers["per_image"])
            if set(numbers) == {"first_mp", "extra_mp"}:
                return PerMegapixel(numbers["first_mp"], numbers["extra_mp"])
        self._bad("price", f"{value!r}: {PRICE_SHAPES}")
        return Unpriced()

    def _credits(self, key: str, value: object) -> float:
        credits = _number(value)
        if credits is None or credits < 0:
            self._bad(f"price.{key}", f"{value!r}: a number of credits, 0 or more")
            return 0.0
        return credits

    def _price_listed(self) -> bool:
        value = self._table.get("price_listed", True)
        if not isinstance(value, bool):
            self._bad("price_listed", f"{value!r}: true or false")
            return True
        return value

    def _sizing(self, model: type[BaseModel]) -> Sizing:
        value = self._table.get("sizing", "image")
        if value not in get_args(Sizing):
            self._bad("sizing", f"{value!r}: one of {', '.join(get_args(Sizing))}")
            return "image"
        needs = {"pixels": ("width", "height"), "aspect_ratio": ("aspect_ratio",), "image": ()}
        missing = [name for name in needs[value] if name not in model.model_fields]
        if model is OpenRequest and value != "image":
            self._bad("sizing", f'an "{OPEN}" request is sized as "image" (its fields are unknown)')
        elif missing:
            self._bad("sizing", f"{value!r} needs request fields {', '.join(missing)}")
        return cast("Sizing", value)

    def _typical_s(self) -> float | None:
        value = self._table.get("typical_s")
        if value is None:
            return None
        seconds = _number(value)
        if seconds is None or seconds <= 0:
            self._bad("typical_s", f"{value!r}: a number of seconds above 0")
        return seconds

    def _status(self) -> Status:
        if self._declared:
            value = self._table.get("status", "declared")
            if value != "declared":
                self._bad("status", f'{value!r}: a declared endpoint\'s status is "declared"')
            return "declared"
        value = self._table.get("status")
        for status in BUILTIN_STATUSES:
            if value == status:
                return status
        if value is not None:  # a missing one is said already
            self._bad("status", f"{value!r}: one of {', '.join(BUILTIN_STATUSES)}")
        return "current"


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
