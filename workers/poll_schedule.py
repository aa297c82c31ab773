"""When to poll a task: a latency model learned without the poll's bias, and the schedule it gives.

Pure arithmetic, no Redis and no clock. A task's generation time is modelled as lognormal. What a
poll schedule observes is an interval: the task was still Pending at the last Pending poll and
Ready at the first Ready one, so the latency lies between the two. Fitting the time of the poll
that *saw* Ready instead (as a moving median does) learns the latency plus the poll's own delay,
which pushes every later poll later still. ``fit`` treats each observation as interval-censored
(EM on the log scale), regularised by a prior so a handful of observations cannot run away.

``best_schedule`` then places polls where Ready is most likely: it minimises the expected delay
between Ready and the poll that sees it, for a budget of polls per task, by dynamic programming
over the model's survival curve (the lower envelope of lines makes each step O(log n)).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

MIN_SIGMA = 0.05
"""A fitted spread never goes below this: no real queue is that regular, and the schedule for a
near-zero spread would bet everything on one instant."""

MAX_SIGMA = 1.5
"""Nor above this: beyond it the model says nothing useful about where Ready lies."""

GRID_POINTS = 600
"""Time steps of the dynamic programme over the model's range: a step is 0.8 % of the median
(40 ms at 5 s), finer than the jitter of a Celery countdown, and a plan costs ~0.1 s."""

HORIZON_SIGMAS = 4.0
"""The schedule is planned out to the quantile this many sigmas above the median (1 in 30,000
tasks take longer); beyond it polls repeat at the last gap."""

REFERENCE_INTERVAL_S = 0.5
"""The fixed interval of the loop in BFL's documentation, against which the poll budget is set."""

EM_ITERATIONS = 25
EM_TOLERANCE = 1e-4
"""A fit that moves mu and sigma less than this per iteration has converged (a 0.01 % change)."""

MAX_POLL_COST = 10.0
"""The dearest poll the budget search tries (median-relative): it yields the sparsest plan."""

BISECTION_STEPS = 12
"""Steps of the search for the poll cost that meets a budget (to about 0.1 %% of its range)."""


def _phi(z: float) -> float:
    return INV_SQRT_2PI * math.exp(-0.5 * z * z)


def _cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / SQRT2)


@dataclass(frozen=True)
class LogNormal:
    """Generation time ``exp(N(mu, sigma²))`` seconds."""

    mu: float
    sigma: float

    @classmethod
    def from_median(cls, median_s: float, sigma: float) -> LogNormal:
        return cls(math.log(median_s), sigma)

    @property
    def median_s(self) -> float:
        return math.exp(self.mu)

    @property
    def mean_s(self) -> float:
        return math.exp(self.mu + self.sigma * self.sigma / 2)

    def cdf(self, t_s: float) -> float:
        """P(the task is Ready by ``t_s`` seconds after submit)."""
        if t_s <= 0:
            return 0.0
        return _cdf((math.log(t_s) - self.mu) / self.sigma)

    def quantile(self, p: float) -> float:
        return math.exp(self.mu + self.sigma * _inverse_cdf(p))


def _inverse_cdf(p: float) -> float:
    """The standard normal quantile, by bisection (called rarely; exactness beats speed here)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# --- learning ------------------------------------------------------------------------------


def _truncated_moments(lo: float, hi: float, mu: float, sigma: float) -> tuple[float, float]:
    """E[x] and E[x²] of N(mu, sigma²) restricted to (lo, hi]; ``lo`` may be -inf."""
    a = -math.inf if lo == -math.inf else (lo - mu) / sigma
    b = (hi - mu) / sigma
    mass = _cdf(b) - (0.0 if a == -math.inf else _cdf(a))
    if mass < 1e-12:  # the interval is far in a tail the current fit does not reach
        x = hi if a == -math.inf else (lo + hi) / 2
        return x, x * x
    pa = 0.0 if a == -math.inf else _phi(a)
    pb = _phi(b)
    apa = 0.0 if a == -math.inf else a * pa
    mean_z = (pa - pb) / mass
    second_z = 1.0 + (apa - b * pb) / mass
    mean = mu + sigma * mean_z
    return mean, mu * mu + 2 * mu * sigma * mean_z + sigma * sigma * second_z


def fit(
    intervals: Sequence[tuple[float, float]],
    *,
    prior: LogNormal,
    prior_weight: float = 3.0,
    start: LogNormal | None = None,
) -> LogNormal:
    """The lognormal most consistent with ``(pending_s, ready_s]`` observations and the prior.

    ``pending_s`` is the last poll that saw Pending (0 when none did), ``ready_s`` the first that
    saw Ready, both in seconds after submit. The prior counts as ``prior_weight`` observations.
    ``start`` (the last fit) lets a refit converge in a few iterations instead of many.
    """
    logs: list[tuple[float, float]] = []
    for pending_s, ready_s in intervals:
        if ready_s <= 0 or ready_s <= pending_s:
            continue
        lo = math.log(pending_s) if pending_s > 0 else -math.inf
        logs.append((lo, math.log(ready_s)))
    if not logs:
        return prior
    origin = start or prior
    mu, sigma = origin.mu, max(origin.sigma, MIN_SIGMA)
    prior_second = prior.mu * prior.mu + prior.sigma * prior.sigma
    total = len(logs) + prior_weight
    for _ in range(EM_ITERATIONS):
        first = prior_weight * prior.mu
        second = prior_weight * prior_second
        for lo, hi in logs:
            m1, m2 = _truncated_moments(lo, hi, mu, sigma)
            first += m1
            second += m2
        new_mu = first / total
        variance = max(second / total - new_mu * new_mu, MIN_SIGMA * MIN_SIGMA)
        new_sigma = min(MAX_SIGMA, max(MIN_SIGMA, math.sqrt(variance)))
        done = abs(new_mu - mu) < EM_TOLERANCE and abs(new_sigma - sigma) < EM_TOLERANCE
        mu, sigma = new_mu, new_sigma
        if done:
            break
    return LogNormal(mu, sigma)


# --- scheduling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Poll times in seconds after submit, then polls every ``tail_gap_s`` past the last one."""

    times_s: tuple[float, ...]
    tail_gap_s: float

    def next_delay_s(self, elapsed_s: float, *, min_delay_s: float, max_tail_gap_s: float) -> float:
        """Seconds from ``elapsed_s`` to the next planned poll (never less than ``min_delay_s``)."""
        i = bisect.bisect_right(self.times_s, elapsed_s + 1e-9)
        if i < len(self.times_s):
            return max(min_delay_s, self.times_s[i] - elapsed_s)
        gap = max(min_delay_s, min(self.tail_gap_s, max_tail_gap_s))
        last = self.times_s[-1] if self.times_s else 0.0
        steps = math.floor((elapsed_s - last) / gap) + 1
        return max(min_delay_s, last + steps * gap - elapsed_s)

    def expected_polls(self, model: LogNormal) -> float:
        """Polls per task under ``model``: poll k happens when the task was Pending at poll k-1."""
        polls, previous = 0.0, 0.0
        for t in self.times_s:
            polls += 1.0 - model.cdf(previous)
            previous = t
        gap = max(self.tail_gap_s, 1e-3)
        for _ in range(100_000):  # past the plan, one poll per tail gap while any mass is left
            left = 1.0 - model.cdf(previous)
            if left < 1e-7:
                break
            polls += left
            previous += gap
        return polls

    def expected_delay_s(self, model: LogNormal, samples: int = 4000) -> float:
        """Mean time from Ready to the poll that sees it, by quadrature over the model."""
        total = 0.0
        for k in range(samples):
            latency = model.quantile((k + 0.5) / samples)
            total += self.next_delay_s(latency, min_delay_s=0.0, max_tail_gap_s=math.inf)
        return total / samples


def fixed_interval_polls(model: LogNormal, interval_s: float = REFERENCE_INTERVAL_S) -> float:
    """Polls per task of a loop that sleeps ``interval_s`` then polls, until Ready."""
    polls, k = 0.0, 0
    while True:
        survival = 1.0 - model.cdf(k * interval_s)
        if survival < 1e-7 or k > 100_000:
            return polls
        polls += survival
        k += 1


class _LowerEnvelope:
    """Li Chao tree over fixed query points: add lines ``y = m·x + b``, ask the minimum at one."""

    def __init__(self, xs: Sequence[float]) -> None:
        self._xs = xs
        self._size = len(xs)
        self._lines: list[tuple[float, float, int] | None] = [None] * (4 * self._size)

    def add(self, slope: float, intercept: float, tag: int) -> None:
        line = (slope, intercept, tag)
        node, lo, hi = 1, 0, self._size - 1
        while True:
            current = self._lines[node]
            if current is None:
                self._lines[node] = line
                return
            mid = (lo + hi) // 2
            xm, xl = self._xs[mid], self._xs[lo]
            new_mid = line[0] * xm + line[1] < current[0] * xm + current[1]
            new_left = line[0] * xl + line[1] < current[0] * xl + current[1]
            if new_mid:
                self._lines[node], line = line, current
            if lo == hi:
                return
            if new_left != new_mid:
                node, hi = 2 * node, mid
            else:
                node, lo = 2 * node + 1, mid + 1

    def best(self, index: int) -> tuple[float, int]:
        x = self._xs[index]
        node, lo, hi = 1, 0, self._size - 1
        value, tag = math.inf, -1
        while True:
            line = self._lines[node]
            if line is not None:
                y = line[0] * x + line[1]
                if y < value:
                    value, tag = y, line[2]
            if lo == hi:
                return value, tag
            mid = (lo + hi) // 2
            if index <= mid:
                node, hi = 2 * node, mid
            else:
                node, lo = 2 * node + 1, mid + 1


def _unit_schedule(sigma: float, poll_cost: float) -> tuple[float, ...]:
    """The best poll times for a median of 1 s: minimise E[delay] + poll_cost · E[polls].

    With F the latency's distribution, the cost from a poll at t_i to the next at t_j is the
    delay of the mass in (t_i, t_j], ``t_j (F_j - F_i) - (A_j - A_i)`` with A the partial first
    moment, plus one poll's cost for every task still pending at t_i. As a function of F_i that
    is a line per j, so each step is a lower-envelope query.
    """
    model = LogNormal(0.0, sigma)
    horizon = math.exp(HORIZON_SIGMAS * sigma)
    step = horizon / (GRID_POINTS - 1)
    grid = [i * step for i in range(GRID_POINTS)]
    cdf = [model.cdf(t) for t in grid]
    partial = [0.0] * GRID_POINTS
    for i in range(1, GRID_POINTS):
        partial[i] = partial[i - 1] + (grid[i] - step / 2) * (cdf[i] - cdf[i - 1])
    value = [0.0] * GRID_POINTS
    following = [GRID_POINTS - 1] * GRID_POINTS
    envelope = _LowerEnvelope(cdf)
    last = GRID_POINTS - 1
    envelope.add(-grid[last], grid[last] * cdf[last] - partial[last], last)
    for i in range(GRID_POINTS - 2, -1, -1):
        best, j = envelope.best(i)
        value[i] = best + partial[i] + poll_cost * (1.0 - cdf[i])
        following[i] = j
        envelope.add(-grid[i], grid[i] * cdf[i] - partial[i] + value[i], i)
    times: list[float] = []
    i = 0
    while i < last:
        i = following[i]
        times.append(grid[i])
    return tuple(times)


def _from_unit(times: Sequence[float]) -> Schedule:
    gaps = [b - a for a, b in zip((0.0, *times), times, strict=False)]
    return Schedule(tuple(times), tail_gap_s=gaps[-1] if gaps else 1.0)


@lru_cache(maxsize=512)
def _unit_for_budget(sigma: float, polls_per_task: float) -> tuple[float, ...]:
    """The best unit-median schedule spending about ``polls_per_task`` (cached: arguments are
    rounded by the caller, so a run computes a handful, ~0.03-0.1 s each)."""
    model = LogNormal(0.0, sigma)
    # More cost per poll, fewer polls: bisect the cost on a log scale until the budget fits.
    lo, hi = math.log(1e-5), math.log(MAX_POLL_COST)
    best = _unit_schedule(sigma, math.exp(hi))
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        candidate = _unit_schedule(sigma, math.exp(mid))
        if _from_unit(candidate).expected_polls(model) > polls_per_task:
            lo = mid
        else:
            best, hi = candidate, mid
    return best


def best_schedule(model: LogNormal, polls_per_task: float) -> Schedule:
    """The schedule with the least expected delay that spends about ``polls_per_task``.

    The best schedule scales with the median, so it is planned for a median of 1 s and stretched.
    """
    sigma = min(MAX_SIGMA, max(MIN_SIGMA, round(model.sigma / 0.02) * 0.02))
    unit = _unit_for_budget(round(sigma, 2), max(1.0, round(polls_per_task, 1)))
    median = model.median_s
    return _from_unit([t * median for t in unit])


FULL_RATE_POLLS = 3.0
"""A task may always spend as many polls as BFL's poll-every-0.5 s loop would, up to this many
(the loop's rate over the first 1.5 s of a task's life); the budget trims only the polls beyond.
A share of the loop's count alone left a 0.5 s model (FLUX.2 [klein]) one poll a task, placed
late: slower than the loop. A slot idle for a given delay costs a fast model a larger share of
its throughput, and its polls are few either way."""


FULL_RATE_SHARE = 0.95
"""The share of the loop's polls a fast model plans for. A plan's count is an expectation under
the fitted model, and the polls spent ran over it (bench, 0.5 s median, 960 jobs: planning the
loop's count spent 1.64 polls a job against the loop's 1.48, at 76.7 % of the cap). At 0.95:
1.52 polls, 74.3 %; at 0.9: 1.35 polls, 71.4 % (below the loop's count, and the utilisation
the issue asks for, 74 %, lost). Polls cost BFL load, not credits; idle slots cost throughput."""


def budget_polls(
    model: LogNormal, budget: float, reference_s: float = REFERENCE_INTERVAL_S
) -> float:
    """Polls per task for a ``budget`` (a share of the polls of a loop polling every
    ``reference_s``, after FULL_RATE_POLLS)."""
    loop = fixed_interval_polls(model, reference_s)
    return max(budget * loop, min(FULL_RATE_SHARE * loop, FULL_RATE_POLLS))


def budget_schedule(
    model: LogNormal, budget: float, reference_s: float = REFERENCE_INTERVAL_S
) -> Schedule:
    """The best schedule spending ``budget_polls`` (the loop's own polls for a fast model, a
    ``budget`` share of them for a slow one)."""
    return best_schedule(model, budget_polls(model, budget, reference_s))
