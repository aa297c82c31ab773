"""How long a simulated generation takes: fixed, uniform or lognormal distributions per endpoint.

Parses the CLI form ``"flux-pro-1.1=lognormal:4:9,default=fixed:1"``; values are model seconds.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from fluxq.config.catalog import CATALOG

Z_95 = 1.6448536269514722
"""The 95th percentile of the standard normal: turns a (p50, p95) pair into a lognormal sigma."""

LOGNORMAL_CLAMP_FACTOR = 10.0
"""Lognormal samples are clamped to this many times p95, so one unlucky draw cannot stall a test."""

DEFAULT_KEY = "default"
"""The latency map's key for every endpoint not named on its own."""


class FixedLatency(BaseModel):
    """Every task of the endpoint takes exactly ``seconds``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["fixed"] = "fixed"
    seconds: float = Field(ge=0)

    def sample(self, rng: random.Random) -> float:
        """One duration in model seconds."""
        return self.seconds


class UniformLatency(BaseModel):
    """Durations spread evenly between ``low_s`` and ``high_s``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["uniform"] = "uniform"
    low_s: float = Field(ge=0)
    high_s: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.high_s < self.low_s:
            raise ValueError(f"uniform high {self.high_s} is below low {self.low_s}")
        return self

    def sample(self, rng: random.Random) -> float:
        """One duration in model seconds."""
        return rng.uniform(self.low_s, self.high_s)


class LogNormalLatency(BaseModel):
    """A long-tailed distribution given by its median and 95th percentile, like real queues."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["lognormal"] = "lognormal"
    p50_s: float = Field(gt=0)
    p95_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.p95_s < self.p50_s:
            raise ValueError(f"lognormal p95 {self.p95_s} is below p50 {self.p50_s}")
        return self

    def sample(self, rng: random.Random) -> float:
        """One duration in model seconds."""
        sigma = (math.log(self.p95_s) - math.log(self.p50_s)) / Z_95
        drawn = rng.lognormvariate(math.log(self.p50_s), sigma)
        return min(drawn, self.p95_s * LOGNORMAL_CLAMP_FACTOR)


def _number(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{item!r}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{item!r}: {text!r} must be a finite number >= 0")
    return value


def parse_distribution(text: str, *, item: str | None = None) -> Latency:
    """Parse ``fixed:S``, ``uniform:LOW:HIGH`` or ``lognormal:P50:P95`` (model seconds)."""
    item = text if item is None else item
    kind, *args = [part.strip() for part in text.split(":")]
    arity = {"fixed": 1, "uniform": 2, "lognormal": 2}
    if kind not in arity:
        raise ValueError(
            f"{item!r}: unknown distribution {kind!r}; use fixed, uniform or lognormal"
        )
    if len(args) != arity[kind]:
        raise ValueError(f"{item!r}: {kind} takes {arity[kind]} number(s) separated by ':'")
    values = [_number(arg, item) for arg in args]
    try:
        if kind == "fixed":
            return FixedLatency(seconds=values[0])
        if kind == "uniform":
            return UniformLatency(low_s=values[0], high_s=values[1])
        return LogNormalLatency(p50_s=values[0], p95_s=values[1])
    except ValueError as exc:
        # pydantic's ValidationError is a ValueError: keep its first message, name the item.
        reason = str(exc).splitlines()[-1].strip() if "\n" in str(exc) else str(exc)
        raise ValueError(f"{item!r}: {reason}") from None


def _from_text(value: Any) -> Any:
    return parse_distribution(value) if isinstance(value, str) else value


Latency = Annotated[
    FixedLatency | UniformLatency | LogNormalLatency,
    Field(discriminator="kind"),
    BeforeValidator(_from_text),
]
"""One latency distribution; in JSON either an object with ``kind`` or the CLI text form."""


def _lognormal(p50_s: float, p95_s: float) -> LogNormalLatency:
    return LogNormalLatency(p50_s=p50_s, p95_s=p95_s)


DEFAULT_LATENCY: Mapping[str, FixedLatency | UniformLatency | LogNormalLatency] = {
    "flux-pro-1.1": _lognormal(4, 8),
    "flux-dev": _lognormal(3, 6),
    "flux-pro": _lognormal(5, 10),
    "flux-pro-1.1-ultra": _lognormal(10, 18),
    "flux-pro-1.1-ultra-finetuned": _lognormal(11, 20),
    "flux-kontext-pro": _lognormal(6, 11),
    "flux-kontext-max": _lognormal(8, 15),
    "flux-pro-1.0-fill": _lognormal(6, 12),
    "flux-pro-1.0-expand": _lognormal(6, 12),
    "flux-pro-1.0-fill-finetuned": _lognormal(7, 13),
    "flux-2-pro": _lognormal(6, 12),
    "flux-2-pro-preview": _lognormal(6, 12),
    "flux-2-max": _lognormal(12, 25),
    "flux-2-flex": _lognormal(15, 30),
    "flux-2-klein-4b": _lognormal(1.5, 3),
    "flux-2-klein-9b": _lognormal(2, 4),
    "flux-2-klein-9b-preview": _lognormal(2, 4),
    "flux-3-video": _lognormal(40, 90),  # tens of seconds: BFL states no generation time
    DEFAULT_KEY: _lognormal(5, 10),
}
"""Built-in model-second latencies per endpoint (guesses from BFL's published speeds)."""


def latency_for(
    endpoint: str, overrides: Mapping[str, FixedLatency | UniformLatency | LogNormalLatency]
) -> FixedLatency | UniformLatency | LogNormalLatency:
    """The distribution of ``endpoint``: configured, configured default, built-in, built-in default.

    A configured ``default`` beats the built-in per-endpoint values: "everything else takes this".
    """
    for table, key in (
        (overrides, endpoint),
        (overrides, DEFAULT_KEY),
        (DEFAULT_LATENCY, endpoint),
    ):
        if key in table:
            return table[key]
    return DEFAULT_LATENCY[DEFAULT_KEY]


def latency_rng(seed: int, endpoint: str, prompt: str) -> random.Random:
    """A generator fixed by (seed, endpoint, prompt) alone: the same prompt draws the same duration
    whichever account submits it and whenever, so clients can be compared job for job."""
    digest = hashlib.sha256(f"{seed}\0{endpoint}\0{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def seeded_duration_s(
    seed: int,
    endpoint: str,
    prompt: str,
    latency: Mapping[str, FixedLatency | UniformLatency | LogNormalLatency],
) -> float:
    """The model seconds (before time_scale) a task takes under ``SimConfig.latency_seed``."""
    return latency_for(endpoint, latency).sample(latency_rng(seed, endpoint, prompt))


def parse_latency(text: str) -> dict[str, FixedLatency | UniformLatency | LogNormalLatency]:
    """Parse ``"endpoint=dist,default=dist"`` into SimConfig's ``latency`` map.

    Raises ValueError naming the bad item, e.g. ``'flux-pro-1.1=normal:4': unknown distribution``.
    """
    table: dict[str, FixedLatency | UniformLatency | LogNormalLatency] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, dist = item.partition("=")
        if not sep or not name.strip() or not dist.strip():
            raise ValueError(f"{item!r} is not 'endpoint=distribution' (e.g. 'default=fixed:1')")
        table[name.strip()] = parse_distribution(dist.strip(), item=item)
    check_latency_keys(table)
    return table


def check_latency_keys(table: Mapping[str, object]) -> None:
    """Raise ValueError naming every key that is neither a catalog endpoint nor ``default``."""
    unknown = sorted(key for key in table if key != DEFAULT_KEY and key not in CATALOG)
    if unknown:
        raise ValueError(f"unknown endpoint(s) in latency: {', '.join(unknown)}")
