"""What a benchmark run compares: latency scenarios, the sides (clients) and the jobs' prompts.

Prompts are the same on every side, and the simulator derives each task's duration from its
prompt (``SimConfig.latency_seed``): every side, and the oracle, face the same per-job latencies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from fluxq.simulator.latency import Z_95, LogNormalLatency

ENDPOINT = "flux-dev"
"""A catalog endpoint with no nested cap group: only the account's cap (24 by default) applies."""


IMAGE_SIZE = {"width": 256, "height": 256}
"""The size every side asks for. The simulator renders each image on the machine under test: at
BFL's default 1024x768 that is 38 ms of CPU a job, a whole core at FLUX.2 [klein] speed (29 jobs
a second) taken from the clients being measured; 256x256 costs 3 ms."""


@dataclass(frozen=True)
class Scenario:
    """A lognormal latency given by its median and the sigma of its logarithm, on one endpoint."""

    name: str
    median_s: float
    sigma: float
    endpoint: str = ENDPOINT
    fields: Mapping[str, object] = field(default_factory=lambda: dict(IMAGE_SIZE))
    """Every request's fields beside its prompt."""
    cap: int | None = None
    """The endpoint's own cap when it has one (FLUX 3 video: 5), else the account's (--cap)."""
    max_n: int | None = None
    """At most this many jobs a side (--n is cut to it): videos take minutes each."""

    def latency(self) -> LogNormalLatency:
        """The simulator's form of it: p50 and p95, where p95 = p50 * exp(1.645 * sigma)."""
        p95_s = self.median_s * math.exp(Z_95 * self.sigma)
        return LogNormalLatency(p50_s=self.median_s, p95_s=p95_s)

    def latency_map(self) -> dict[str, LogNormalLatency]:
        """``SimConfig.latency`` for the scenario's one endpoint."""
        return {self.endpoint: self.latency()}

    def prompt(self, index: int) -> str:
        """Job ``index``'s prompt, identical across sides so its latency is too."""
        return f"bench {self.name} job {index}"

    def request(self, index: int) -> dict[str, object]:
        """Job ``index``'s request: its prompt and the scenario's fields (every side sends the
        same)."""
        return {"prompt": self.prompt(index), **self.fields}

    def slots(self, account_cap: int) -> int:
        """The slots the scenario's jobs can hold: the endpoint's cap inside the account's."""
        return min(self.cap, account_cap) if self.cap is not None else account_cap

    def jobs(self, n: int) -> int:
        """Jobs a side runs when asked for ``n``."""
        return min(n, self.max_n) if self.max_n is not None else n


SCENARIOS = {
    "l5": Scenario("l5", median_s=5.0, sigma=0.4),
    "l1": Scenario("l1", median_s=1.0, sigma=0.3),
    # FLUX.2 [klein]: "sub-second generation"
    "klein": Scenario("klein", median_s=0.5, sigma=0.3),
    # FLUX 3 video, text to video: 5 active at once, and "videos take minutes" (BFL states no
    # time: the catalog's guess, 120 s, is the median); run it with --time-scale (0.05: 6 s)
    "video": Scenario(
        "video",
        median_s=120.0,
        sigma=0.3,
        endpoint="flux-3-video",
        fields={"mode": "t2v", "resolution": "hd", "duration": 5},
        cap=5,
        max_n=100,
    ),
}


@dataclass(frozen=True)
class Brownout:
    """The faults of ``python -m bench brownout``, in seconds from a side's first job; every
    figure is multiplied by ``--time-scale`` (the simulator's ``slow_delay_s`` is wall-clock)."""

    kill_at_s: float = 40.0
    """Steady work until then; then POSTs turn slow until a full cap of them is in flight, and
    the side's whole process tree is SIGKILLed."""
    slow_post_s: float = 20.0
    """How long a POST takes to be answered while the cap fills with them (below fluxq's 30 s
    read timeout: the POSTs are still in flight at the kill)."""
    outage_at_s: float = 180.0
    """Then 503 to every POST ..."""
    outage_s: float = 60.0
    """... for this long."""
    bucket_s: float = 10.0
    """Images per minute are shown per this many seconds."""

    def scaled(self, factor: float) -> Brownout:
        """The same timeline, ``factor`` times as long."""
        return Brownout(
            kill_at_s=self.kill_at_s * factor,
            slow_post_s=self.slow_post_s * factor,
            outage_at_s=self.outage_at_s * factor,
            outage_s=self.outage_s * factor,
            bucket_s=self.bucket_s * factor,
        )


BROWNOUT = Brownout()

SideKind = Literal["naive", "fluxq"]

SIDE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
"""Side names become API keys, Redis batch names and directory names: keep them plain."""


@dataclass(frozen=True)
class Side:
    """One client under test: the naive loop, or ``fluxq worker`` with extra environment."""

    name: str
    kind: SideKind
    env: Mapping[str, str] = field(default_factory=dict)
    webhook: bool = False
    """Webhook mode: a ``fluxq api`` beside the workers receives BFL's calls back."""

    def key(self, scenario: Scenario) -> str:
        """The side's own API key, hence its own simulator account and cap."""
        return f"bench-{self.name}-{scenario.name}"


BUILTIN_SIDES = {
    "naive": Side("naive", "naive"),
    "fluxq": Side("fluxq", "fluxq"),
    "fluxq-probe": Side("fluxq-probe", "fluxq", {"FLUXQ_PROBE_SUBMITS": "true"}),
    "fluxq-webhook": Side("fluxq-webhook", "fluxq", webhook=True),
    "fluxq-webhook-celery": Side(
        "fluxq-webhook-celery", "fluxq", {"FLUXQ_API_SUBMITS": "false"}, webhook=True
    ),
    "fluxq-webhook-probe": Side(
        "fluxq-webhook-probe", "fluxq", {"FLUXQ_PROBE_SUBMITS": "true"}, webhook=True
    ),
}


def parse_side(text: str) -> Side:
    """``NAME:ENV=VAL;ENV=VAL``: a fluxq side with that environment (new strategies, no code)."""
    name, _, assignments = text.partition(":")
    name = name.strip()
    if not SIDE_NAME.fullmatch(name):
        raise ValueError(f"side name {name!r}: use lower-case letters, digits and -")
    if name == "naive":
        raise ValueError("'naive' is the built-in naive loop; name a fluxq side otherwise")
    env: dict[str, str] = {}
    for item in assignments.split(";"):
        if not item.strip():
            continue
        var, sep, value = item.partition("=")
        if not sep or not var.strip():
            raise ValueError(f"side {name}: {item!r} is not ENV=VALUE")
        env[var.strip()] = value.strip()
    return Side(name, "fluxq", env)


def choose_sides(names: list[str], custom: list[Side]) -> list[Side]:
    """The sides to run, in order: ``names`` (built-in or custom), then custom ones not named."""
    known = {**BUILTIN_SIDES, **{side.name: side for side in custom}}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown side(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in dict.fromkeys(names)]
    return chosen + [side for side in custom if side.name not in names]
