"""``POST /v1/pricing``: BFL's quote for one FLUX.2 image, as BFL's SDK asks it.

The body is ``{"model", "width", "height", "input_images": [{"width", "height"}, ...]}`` and the
answer ``{"cost": credits}``. BFL quotes FLUX.2 models only and some deployments answer 404
(``pricing_available``). Prices are fluxq's table times ``price_factor``, the same factor the
submit's ``cost`` carries, so a test can tell a quote from the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from fluxq.config.catalog import (
    CATALOG,
    PerMegapixel,
    estimate_credits,
    megapixel_credits,
    output_megapixels,
)
from fluxq.config.requests import PIXELS_PER_MEGAPIXEL
from fluxq.simulator.config import SimConfig
from fluxq.simulator.engine import NOT_AUTHENTICATED, Reply, Simulator, detail

MAX_SIDE_PX = 16_384
"""Sides beyond this are refused (422): no FLUX model renders or reads them."""


def price(config: SimConfig, endpoint: str, request: BaseModel) -> float:
    """What a submit of ``request`` costs on this simulator: the table's price, scaled."""
    return round(estimate_credits(endpoint, request) * config.price_factor, 2)


def quote(sim: Simulator, key: str | None, body: object) -> Reply:
    """The reply to ``POST /v1/pricing`` with ``body`` (already decoded JSON)."""
    if not sim.config.pricing_available:
        return detail(404, "Not Found")
    if sim.account_for(key) is None:
        return NOT_AUTHENTICATED
    errors = _errors(body)
    if errors:
        return Reply(422, {"detail": errors})
    assert isinstance(body, Mapping)
    spec = CATALOG.get(str(body["model"]))
    if spec is None or not isinstance(spec.price, PerMegapixel):
        return Reply(422, {"detail": [_error(("body", "model"), "pricing quotes FLUX.2 models")]})
    out_mp = output_megapixels(int(body["width"]), int(body["height"]))
    in_pixels = sum(int(item["width"]) * int(item["height"]) for item in body["input_images"])
    credits = megapixel_credits(spec.price, out_mp, in_pixels / PIXELS_PER_MEGAPIXEL)
    return Reply(200, {"cost": round(credits * sim.config.price_factor, 2)})


def _errors(body: object) -> list[dict[str, Any]]:
    if not isinstance(body, Mapping):
        return [_error(("body",), "must be a JSON object")]
    errors = []
    if not isinstance(body.get("model"), str):
        errors.append(_error(("body", "model"), "Field required (a string)"))
    for name in ("width", "height"):
        if not _side(body.get(name)):
            errors.append(_error(("body", name), f"an integer 1..{MAX_SIDE_PX}"))
    images = body.get("input_images", [])
    if not isinstance(images, list):
        return [*errors, _error(("body", "input_images"), "must be a list")]
    for i, item in enumerate(images):
        sized = isinstance(item, Mapping) and _side(item.get("width")) and _side(item.get("height"))
        if not sized:
            errors.append(_error(("body", "input_images", i), "needs integer width and height"))
    return errors


def _side(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIDE_PX


def _error(loc: tuple[str | int, ...], msg: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": "value_error"}
