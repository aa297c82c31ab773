"""``deploy/.env.example`` made from ``Settings``: every variable fluxq reads, its default, its use.

``python -m fluxq.config.env_example > deploy/.env.example`` writes it; ``tests/deploy`` fails
when the committed file drifts from what this renders. Every assignment is commented out, so a
copied file changes nothing until a line is uncommented: an empty secret is not an unset one
(``FLUXQ_API_TOKEN=`` is a token, the empty one), so no secret is ever set by accident.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any, get_args

import annotated_types
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fluxq.config.settings import Settings

WIDTH = 100
"""The longest line written (the repository's line length)."""

NBSP = "\xa0"
"""Keeps ``>= 1`` on one line when wrapping (textwrap never breaks there); written as a space."""

HEADER = """\
# fluxq settings: every variable fluxq reads, with its default and what it does.
# Generated from config/settings.py: python -m fluxq.config.env_example > deploy/.env.example
# (tests/deploy fails when this file and the settings drift apart).
#
# Copy it to deploy/.env (docker compose), /etc/fluxq/env (systemd) or into the ConfigMap and
# Secret (Kubernetes), then uncomment and set what you change: every line here is commented out,
# so a copy changes nothing by itself. Secrets have no default: set them in this file (or your
# secret store) only, never in compose.yaml, a unit file or on a command line. Left empty, a
# secret is not unset: delete or comment out the line instead.
"""

BOUNDS = (
    (annotated_types.Gt, ">"),
    (annotated_types.Ge, ">="),
    (annotated_types.Lt, "<"),
    (annotated_types.Le, "<="),
)
"""pydantic's constraint objects, in the order they are shown, with their symbols."""


def env_name(name: str, field: FieldInfo) -> str:
    """The variable a field is read from: its first alias, else ``FLUXQ_<NAME>``."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices) and alias.choices and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"FLUXQ_{name.upper()}"


def is_secret(field: FieldInfo) -> bool:
    """True for ``SecretStr`` fields (and ``SecretStr | None``)."""
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in get_args(annotation)


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in an env file; empty for none (and for secrets)."""
    value: Any = field.get_default(call_default_factory=True, validated_data={})
    if value is None or value is PydanticUndefined or is_secret(field):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.removesuffix(".0")
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    return str(value)


def bounds_text(field: FieldInfo) -> str:
    """The allowed range, such as ``>= 1, <= 1000``, or empty."""
    parts: list[str] = []
    for kind, symbol in BOUNDS:
        for item in field.metadata:
            if isinstance(item, kind):
                limit = getattr(item, kind.__name__.lower())
                shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
                parts.append(f"{symbol}{NBSP}{shown}")
    return ", ".join(parts)


def comment_lines(field: FieldInfo) -> list[str]:
    """The comment above a variable: its description, range and whether it is a secret."""
    text = " ".join((field.description or "").split())
    extra = bounds_text(field)
    if extra:
        text = f"{text} Allowed: {extra}." if text else f"Allowed: {extra}."
    if is_secret(field):
        text = f"{text} Secret." if text else "Secret."
    if not text:
        return []
    lines = textwrap.wrap(text, width=WIDTH, initial_indent="# ", subsequent_indent="# ")
    return [line.replace(NBSP, " ") for line in lines]


def render() -> str:
    """The whole ``.env.example``: the header, then one block per setting in declaration order."""
    blocks = [HEADER]
    for name, field in Settings.model_fields.items():
        lines = comment_lines(field)
        lines.append(f"#{env_name(name, field)}={default_text(field)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
