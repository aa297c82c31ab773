"""Learned generation times per endpoint and image size, shared by every worker through Redis.

Each Ready adds one observation, ``(last Pending poll, first Ready poll]`` in seconds after
submit, to a short list per endpoint and per endpoint+size. Every process fits the lognormal of
``workers.poll_schedule`` from that list now and then and plans its polls from the fit; between
refits it answers from memory, so a poll costs no extra round trip to decide when the next is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from fluxq.workers.poll_schedule import (
    REFERENCE_INTERVAL_S,
    LogNormal,
    Schedule,
    budget_schedule,
    fit,
)
from fluxq.workers.state import keys

WINDOW = 1024
"""Observations kept per list: enough that the fitted median wanders by about 1.5 % (256 let it
wander by 3 %, and each wander moved the plan), few enough to follow a change in BFL's speed
within minutes of work at the cap."""

KEEP_PLAN_WITHIN = 0.03
"""A refit that moves the median by less than 3 % and sigma by less than 0.03 keeps the current
plan: a task polled on one plan and then another pays for polls of both grids."""

MIN_OBSERVATIONS = 8
"""Below this a size's own list is not used (the endpoint's is), nor the endpoint's (the prior)."""

REFIT_INTERVAL_S = 5.0
"""A process refits a settled model at most this often. A refit holds the GIL (EM over the
window, warm-started from the last fit: a few ms), and a new plan (a dynamic programme, ~0.1 s)
is only computed when the fit really moved (KEEP_PLAN_WITHIN), so polls never wait behind it for
long."""

PRIOR_SIGMA = 0.8
"""The prior's spread: wide, because the prior median is a guess until the first observations."""

PRIOR_WEIGHT = 1.0
"""How many observations the prior counts as while there are few (it is a guess)."""

COLD_INTERVAL_S = 0.5
"""Until an endpoint has 8 observations its tasks are polled this often, like BFL's own loop: the
prior is a guess, and a first turn should cost no more time than the loop's."""

COLD_REFIT_INTERVAL_S = 0.25
"""While a model rests on fewer than 8 observations it is refitted this often, so the first
turn's tasks switch to a learned plan as soon as there is one (a list of 8 costs nothing)."""


def size_class(width: object, height: object) -> str:
    """A coarse image-size label (nearest half megapixel) for requests that name their size."""
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return f"{round(width * height / 2**20 * 2) / 2:.1f}mp"
    return "default"


@dataclass
class _Plan:
    fitted_at: float
    model: LogNormal
    schedule: Schedule
    observations: int

    def fresh(self, now: float) -> bool:
        cold = self.observations < MIN_OBSERVATIONS
        return now - self.fitted_at < (COLD_REFIT_INTERVAL_S if cold else REFIT_INTERVAL_S)


class LatencyBook:
    """Fits and caches one poll schedule per (endpoint, size class)."""

    def __init__(
        self,
        client: redis.Redis[str],
        *,
        budget: float,
        prior_median_s: float,
        typical_s: Mapping[str, float] | None = None,
        reference_s: float = REFERENCE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self.budget = budget
        self.reference_s = reference_s
        """The loop whose polls the budget is a share of: one polling every this many seconds."""
        self.prior = LogNormal.from_median(prior_median_s, PRIOR_SIGMA)
        """The prior of an endpoint ``typical_s`` does not name."""
        self._priors = {
            endpoint: LogNormal.from_median(seconds, PRIOR_SIGMA)
            for endpoint, seconds in (typical_s or {}).items()
        }
        self._clock = clock
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._lock = threading.Lock()

    def observe(self, endpoint: str, size: str, pending_s: float, ready_s: float) -> None:
        """Record that a task became Ready after ``pending_s`` and by ``ready_s``."""
        if ready_s <= pending_s:
            return
        entry = f"{pending_s:.4f} {ready_s:.4f}"
        pipe = self._redis.pipeline(transaction=False)
        for key in (keys.latency(endpoint), keys.latency(endpoint, size)):
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, WINDOW - 1)
        pipe.execute()

    def schedule(self, endpoint: str, size: str) -> Schedule:
        """The poll plan for a task of this endpoint and size, refitted at most every 5 s
        (every 0.25 s while it rests on fewer than 8 observations)."""
        now = self._clock()
        with self._lock:
            plan = self._plans.get((endpoint, size))
        if plan is not None and plan.fresh(now):
            return plan.schedule
        fresh = self._plan(endpoint, size, now, plan)
        with self._lock:
            self._plans[(endpoint, size)] = fresh
        return fresh.schedule

    def model(self, endpoint: str, size: str) -> LogNormal:
        """The current fit (for status output and tests)."""
        self.schedule(endpoint, size)
        with self._lock:
            return self._plans[(endpoint, size)].model

    def prior_of(self, endpoint: str) -> LogNormal:
        """What an endpoint's generation time is assumed to be before it is seen: its typical
        time from the catalog, else the settings' prior."""
        return self._priors.get(endpoint, self.prior)

    def _plan(self, endpoint: str, size: str, now: float, last: _Plan | None) -> _Plan:
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(keys.latency(endpoint, size), 0, WINDOW - 1)
        pipe.lrange(keys.latency(endpoint), 0, WINDOW - 1)
        by_size, by_endpoint = pipe.execute()
        rows = by_size if len(by_size) >= MIN_OBSERVATIONS else by_endpoint
        observations = [parsed for row in rows if (parsed := _parse(row)) is not None]
        if len(observations) < MIN_OBSERVATIONS:
            # A fit on a handful of intervals can be far off, and a wrong plan costs seconds a
            # task: until there are 8, poll like BFL's loop.
            cold = Schedule((), tail_gap_s=COLD_INTERVAL_S)
            return _Plan(now, self.prior_of(endpoint), cold, len(observations))
        # The prior weighs as 1 observation among the first 8 and fades as more arrive, so it
        # steadies a cold start without biasing a settled fit.
        weight = PRIOR_WEIGHT * MIN_OBSERVATIONS / max(MIN_OBSERVATIONS, len(observations))
        start = last.model if last is not None and last.observations >= MIN_OBSERVATIONS else None
        prior = self.prior_of(endpoint)
        model = fit(observations, prior=prior, prior_weight=weight, start=start)
        count = len(observations)
        if last is not None and count >= MIN_OBSERVATIONS and _close(last.model, last, model):
            return _Plan(now, last.model, last.schedule, count)
        return _Plan(now, model, budget_schedule(model, self.budget, self.reference_s), count)


def _close(old: LogNormal, plan: _Plan, new: LogNormal) -> bool:
    """Whether a new fit plans the same as the one in use (see KEEP_PLAN_WITHIN)."""
    if plan.observations < MIN_OBSERVATIONS:
        return False
    return abs(new.mu - old.mu) < KEEP_PLAN_WITHIN and abs(new.sigma - old.sigma) < KEEP_PLAN_WITHIN


def _parse(row: str) -> tuple[float, float] | None:
    try:
        pending, ready = row.split()
        return float(pending), float(ready)
    except ValueError:
        return None
