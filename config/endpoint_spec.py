"""What an endpoint is to fluxq: ``EndpointSpec``, its price rules, and the shape of its path.

One entry of an endpoints file (``fluxq.config.endpoints`` reads them) is one ``EndpointSpec``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from fluxq.config.requests import OpenRequest

ENDPOINT_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
"""An endpoint's path after ``/v1/``: segments of lower-case letters, digits, ``.``, ``_`` and
``-`` that start with a letter or digit, joined by ``/`` (a nested path: ``flux-tools/erase-v1``).
So no segment is ``.`` or ``..``, and nothing in it needs escaping in a URL, a Redis key, a metric
label, a spool line or a CSV cell. No file or directory is ever named after an endpoint."""

DEFAULT_CAP_CLASS = "default"
"""The cap class of an endpoint with no nested cap: only the account's cap applies. The same name
as the limiter's default group (``workers/state/keys.DEFAULT_GROUP``)."""

IMAGE = "image"
"""``media = "image"``: an image, whose format the request's ``output_format`` chooses."""

IMAGE_URL_LIFETIME_S = 600.0
"""BFL's signed image URLs are valid 10 minutes (BFL's documentation): an image's default."""

Status = Literal["current", "legacy", "preview", "declared"]
"""current; legacy (replaced, still enqueueable); preview (request fields UNCONFIRMED); declared
(from FLUXQ_ENDPOINTS_FILE)."""

Sizing = Literal["pixels", "aspect_ratio", "image"]


@dataclass(frozen=True)
class PerImage:
    """A flat price per generated image."""

    credits: float

    def text(self) -> str:
        """The formula in words: ``4 credits/image``."""
        return f"{self.credits:g} credits/image"


@dataclass(frozen=True)
class PerMegapixel:
    """FLUX.2 pricing: the first output megapixel, then each extra output or input megapixel."""

    first_mp_credits: float
    extra_mp_credits: float

    def text(self) -> str:
        """The formula in words: ``3 + 1.5/extra MP``."""
        return f"{self.first_mp_credits:g} + {self.extra_mp_credits:g}/extra MP"


@dataclass(frozen=True)
class Unpriced:
    """No known price: estimated as 0 credits, and said so wherever prices are shown."""

    def text(self) -> str:
        """The formula in words: ``unpriced``."""
        return "unpriced"


PriceRule = PerImage | PerMegapixel | Unpriced


@dataclass(frozen=True)
class EndpointSpec:
    """One generation endpoint: ``POST /v1/<endpoint>``, an entry of an endpoints file."""

    endpoint: str
    request_model: type[BaseModel]
    schema_name: str | None
    price: PriceRule
    cap_group: str | None
    """The nested cap class, None for the account's default class."""
    sizing: Sizing
    prompt_max_chars: int | None
    """The longest ``prompt`` the request model accepts (``PROMPT_MAX_CHARS``), None if none."""
    media: str = IMAGE
    url_lifetime_s: float = IMAGE_URL_LIFETIME_S
    typical_s: float | None = None
    """Typical generation time, a prior from the table (None: a declared file gave none)."""
    status: Status = "current"
    price_listed: bool = True
    """False when BFL's price list does not name the endpoint: its price is fluxq's guess."""

    @property
    def open(self) -> bool:
        """Whether fluxq does not know its fields (``request = "open"``)."""
        return self.request_model is OpenRequest

    @property
    def cap_class(self) -> str:
        return self.cap_group or DEFAULT_CAP_CLASS
