"""``fluxq endpoints``: the endpoint table this machine's settings give, declared endpoints too.

It reads settings only (no Redis, no key): what a worker or ``fluxq api`` started here would take.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from fluxq.cli.common import settings_or_exit
from fluxq.config.catalog import EndpointSpec, PerImage, PerMegapixel

COLUMNS = ("path", "cap", "media", "price", "status")
"""The table's columns; ``--json`` gives every field."""


def price_text(spec: EndpointSpec) -> str:
    """The price formula in words: ``4 credits/image``, ``3 + 1.5/extra MP``, ``unpriced``; a
    price BFL's list does not name is marked as fluxq's estimate."""
    text = spec.price.text()
    return text if spec.price_listed else f"{text} (estimate)"


def row(spec: EndpointSpec) -> dict[str, str]:
    return {
        "path": spec.endpoint,
        "cap": spec.cap_class,
        "media": spec.media,
        "price": price_text(spec),
        "status": spec.status,
    }


def as_json(spec: EndpointSpec) -> dict[str, Any]:
    """One endpoint as ``--json`` gives it: the table's columns, then the rest of its entry."""
    price: dict[str, Any] = {"kind": "unpriced"}
    if isinstance(spec.price, PerImage):
        price = {"kind": "per_image", "credits": spec.price.credits}
    elif isinstance(spec.price, PerMegapixel):
        price = {
            "kind": "per_megapixel",
            "first_mp": spec.price.first_mp_credits,
            "extra_mp": spec.price.extra_mp_credits,
        }
    return {
        **row(spec),
        "price": price | {"text": price_text(spec), "listed": spec.price_listed},
        "request": "open" if spec.open else spec.request_model.__name__,
        "url_lifetime_s": spec.url_lifetime_s,
        "sizing": spec.sizing,
        "typical_s": spec.typical_s,
    }


def table(rows: list[dict[str, str]]) -> str:
    """Plain columns, as wide as their longest cell: a pipe or a narrow terminal keeps each
    endpoint on one line."""
    widths = {name: max(len(name), *(len(r[name]) for r in rows)) for name in COLUMNS}
    lines = [dict(zip(COLUMNS, COLUMNS, strict=True)), *rows]
    return "\n".join(
        "  ".join(line[name].ljust(widths[name]) for name in COLUMNS).rstrip() for line in lines
    )


def endpoints_command(
    json_out: bool = typer.Option(False, "--json", help="A JSON array, every field."),
) -> None:
    """List the endpoints: path, cap class, media, price, status (FLUXQ_ENDPOINTS_FILE too)."""
    specs = list(settings_or_exit().catalog.values())
    if json_out:
        typer.echo(json.dumps([as_json(spec) for spec in specs], indent=2))
        return
    typer.echo(table([row(spec) for spec in specs]))


def register(app: typer.Typer) -> None:
    app.command("endpoints")(endpoints_command)
