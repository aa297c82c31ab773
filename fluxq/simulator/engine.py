"""The simulator's state and rules, free of HTTP: accounts, tasks, dice, config and counters.

The ASGI app (app.py) turns requests into calls here and Replies into responses; tests can call it.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fluxq.config.video import (
    RESULT_DRAFT_CACHE_FIELD,
    RESULT_DRAFT_CACHES_FIELD,
    RESULT_SAMPLES_FIELD,
)
from fluxq.simulator.accounts import Account, Accounts, key_digest
from fluxq.simulator.clock import Clock, ListenerURLs
from fluxq.simulator.config import SimConfig
from fluxq.simulator.delivery import SampleRef, Verdict, check_sample, sign_sample_url
from fluxq.simulator.images import ImageCache
from fluxq.simulator.tasks import Task, TaskStatus, TaskStore, view_task
from fluxq.simulator.videos import read_draft_cache, sign_draft_cache

Phase = Literal["submit", "poll", "download"]
Fault = Literal["500", "503", "403", "drop"]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer in plain data: status, JSON body, headers; ``lost`` means drop it instead."""

    status_code: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    lost: bool = False


def detail(status_code: int, text: str, headers: Mapping[str, str] | None = None) -> Reply:
    """A FastAPI-style ``{"detail": "..."}`` error."""
    return Reply(status_code, {"detail": text}, headers or {})


NOT_AUTHENTICATED = detail(403, "Not authenticated")


@dataclass(frozen=True)
class SampleGrant:
    """A download the delivery host may serve: which image to render."""

    prompt: str
    seed: int
    width: int
    height: int
    fmt: str
    index: int = 1
    video_s: float = 0.0


class Simulator:
    """All mutable state behind one lock: the listeners' event loop and test threads share it."""

    def __init__(self, config: SimConfig | None = None, *, clock: Clock | None = None) -> None:
        self._config = config or SimConfig()
        self.clock = clock or Clock()
        self.lock = threading.RLock()
        self.rng = random.Random(self._config.rng_seed)
        self.accounts = Accounts()
        self.tasks = TaskStore()
        self.images = ImageCache(self._config.image_cache_size)
        # Per process, never shown: signed URLs stop verifying when the simulator restarts.
        self.delivery_secret = secrets.token_bytes(32)
        self.urls: ListenerURLs | None = None
        self.counters: Counter[str] = Counter()
        self.on_task_created: Callable[[Task], None] | None = None
        self.on_reset: Callable[[], None] | None = None

    @property
    def config(self) -> SimConfig:
        """The current knobs (an immutable snapshot)."""
        return self._config

    def configure(self, patch: Mapping[str, Any]) -> SimConfig:
        """Apply a patch of SimConfig fields; raises pydantic's ValidationError naming bad ones."""
        with self.lock:
            new = self._config.patched(patch)
            if "rng_seed" in patch:
                self.rng.seed(new.rng_seed)
            self.images.resize(new.image_cache_size)
            self._config = new
            return new

    def reset(self) -> None:
        """Forget tasks, accounts and counters (config stays); pending webhooks are dropped."""
        with self.lock:
            self.accounts.clear()
            self.tasks.clear()
            self.counters.clear()
            self.rng.seed(self._config.rng_seed)
            if self.on_reset is not None:
                self.on_reset()

    def roll(self, rate: float) -> bool:
        """True with probability ``rate``, from the simulator's seeded generator."""
        with self.lock:
            return rate > 0 and self.rng.random() < rate

    def pick_fault(self, phase: Phase) -> Fault | None:
        """The injected failure for one request of ``phase``, counted, or None."""
        cfg = self._config
        rates: dict[Phase, tuple[tuple[Fault, float], ...]] = {
            "submit": (
                ("500", cfg.submit_500_rate),
                ("503", cfg.submit_503_rate),
                ("drop", cfg.submit_drop_rate),
            ),
            "poll": (
                ("500", cfg.poll_500_rate),
                ("503", cfg.poll_503_rate),
                ("drop", cfg.poll_drop_rate),
            ),
            "download": (("403", cfg.download_403_rate), ("drop", cfg.download_drop_rate)),
        }
        for fault, rate in rates[phase]:
            if self.roll(rate):
                self.count(f"fault_{phase}_{fault}")
                return fault
        return None

    def slow_delay_s(self, phase: Phase) -> float:
        """Seconds to stall this answer: ``slow_delay_s`` at ``slow_rate`` (and, for a submit, at
        ``submit_slow_rate``), else 0."""
        cfg = self._config
        if self.roll(cfg.slow_rate) or (phase == "submit" and self.roll(cfg.submit_slow_rate)):
            self.count("fault_slow")
            return cfg.slow_delay_s
        return 0.0

    def count(self, name: str, by: int = 1) -> None:
        """Bump a global counter (events that belong to no account)."""
        with self.lock:
            self.counters[name] += by

    def account_for(self, key: str | None) -> Account | None:
        """The account of an accepted key, or None (counted) when the key is missing or refused."""
        cfg = self._config
        if key is None or not key.strip() or not cfg.key_allowed(key):
            self.count("forbidden_403")
            return None
        with self.lock:
            return self.accounts.get_or_create(key, cfg.initial_credits)

    def credits(self, key: str | None) -> Reply:
        """``GET /v1/credits``."""
        account = self.account_for(key)
        if account is None:
            return NOT_AUTHENTICATED
        return Reply(200, {"credits": round(account.credits, 4)})

    def set_credits(self, key: str, credits: float) -> None:
        """Set an account's balance (opening it if new): the way tests provoke or lift 402s."""
        with self.lock:
            self.accounts.get_or_create(key, self._config.initial_credits).credits = credits

    def result_body(self, task: Task, now: float) -> dict[str, Any]:
        """``get_result``'s JSON for ``task`` at ``now`` (also the webhook's source)."""
        cfg = self._config
        seen = view_task(task, now, report_progress=cfg.report_progress)
        body: dict[str, Any] = {
            "id": task.id,
            "status": seen.status.value,
            "result": None,
            "progress": seen.progress,
            "details": None,
            "preview": None,
        }
        if seen.status is TaskStatus.READY:
            ttl_s = cfg.video_url_ttl_s if task.video_s else cfg.sample_url_ttl_s
            expires_at = (now if cfg.resign_sample_on_poll else task.ready_at) + ttl_s
            body["result"] = self._ready_result(task, expires_at)
        elif seen.status is TaskStatus.CONTENT_MODERATED:
            body["details"] = {"Moderation Reasons": list(cfg.content_moderation_reasons)}
        elif seen.status is TaskStatus.REQUEST_MODERATED:
            body["details"] = {"Moderation Reasons": list(cfg.request_moderation_reasons)}
        return body

    def _ready_result(self, task: Task, expires_at: float) -> dict[str, Any]:
        """A Ready task's ``result``: its sample, and for a video draft every sample and a draft
        cache per sample (the shape fluxq.config.video names, UNCONFIRMED)."""
        urls = [
            sign_sample_url(
                self.delivery_secret,
                task.delivery_base,
                task.id,
                task.fmt,
                expires_at,
                index=index,
            )[0]
            for index in range(1, task.samples + 1)
        ]
        result: dict[str, Any] = {"sample": urls[0], "prompt": task.prompt, "seed": task.seed}
        if task.draft:
            caches = [
                sign_draft_cache(
                    self.delivery_secret, task.delivery_base, task.id, index, expires_at
                )
                for index in range(1, task.samples + 1)
            ]
            result[RESULT_SAMPLES_FIELD] = urls
            result[RESULT_DRAFT_CACHES_FIELD] = caches
            result[RESULT_DRAFT_CACHE_FIELD] = caches[0]
        return result

    def draft_cache_problem(self, url: str) -> str | None:
        """Why ``draft_cache`` names no draft a ``draft_enhance`` may render, or None: one of our
        signed, unexpired cache URLs, of a Ready draft task still kept."""
        with self.lock:
            now = self.clock.now()
            named = read_draft_cache(self.delivery_secret, url, now)
            if isinstance(named, str):
                return named
            task_id, index = named
            task = self.tasks.get(task_id, now, self._config.retention_s)
            if task is None or not task.draft or index > task.samples or now < task.ready_at:
                return "no such draft"
            return None

    def get_result(self, task_id: str | None, key: str | None, *, on_api_host: bool) -> Reply:
        """``GET /v1/get_result?id=``: always 200 unless the id is missing (422)."""
        if not task_id:
            self.count("invalid_422")
            error = {"loc": ["query", "id"], "msg": "Field required", "type": "missing"}
            return Reply(422, {"detail": [error]})
        if self._config.get_result_requires_key and self.account_for(key) is None:
            return NOT_AUTHENTICATED
        with self.lock:
            now = self.clock.now()
            task = self.tasks.get(task_id, now, self._config.retention_s)
            if task is None:
                self.counters["polls_unknown_id"] += 1
                return Reply(200, not_found_body(task_id))
            if on_api_host and self._config.strict_polling_host and self.urls is not None:
                # It lives on the polling "cluster"; this host has never heard of it.
                task.account.polls_wrong_host += 1
                return Reply(200, not_found_body(task_id))
            task.polls += 1
            task.account.record_poll(task.polls)
            if task.first_terminal_poll_at is None and now >= max(task.ready_at, task.visible_at):
                task.first_terminal_poll_at = now
            return Reply(200, self.result_body(task, now))

    def authorise_sample(self, ref: SampleRef) -> SampleGrant | Reply:
        """Check a sample URL: 403 on a bad signature, 403/404 once expired, 404 if not Ready."""
        with self.lock:
            now = self.clock.now()
            verdict = check_sample(self.delivery_secret, ref, now)
            if verdict is Verdict.BAD_SIGNATURE:
                self.counters["bad_signature_downloads"] += 1
                return detail(403, "Signature does not match")
            task = self.tasks.get(ref.task_id, now, self._config.retention_s)
            if verdict is Verdict.EXPIRED:
                if task is not None:
                    task.account.expired_downloads += 1
                else:
                    self.counters["expired_downloads_unknown_task"] += 1
                return detail(self._config.expired_download_status, "Request has expired")
            if (
                task is None
                or task.outcome is not TaskStatus.READY
                or now < task.ready_at
                or ref.index > task.samples
            ):
                self.counters["downloads_not_found"] += 1
                return detail(404, "The specified blob does not exist")
            task.account.downloads += 1
            if task.first_download_at is None:
                task.first_download_at = now
            return SampleGrant(
                task.prompt,
                task.seed,
                task.width,
                task.height,
                task.fmt,
                index=ref.index,
                video_s=task.video_s,
            )

    def stats(self, label: str | None = None) -> dict[str, Any]:
        """``GET /sim/stats``: counters per account label, plus the global ones."""
        with self.lock:
            now = self.clock.now()
            accounts = {a.label: a.snapshot(now) for a in self.accounts.all()}
            if label is not None:
                accounts = {k: v for k, v in accounts.items() if k == label}
            return {
                "accounts": accounts,
                "counters": dict(self.counters),
                "tasks_stored": len(self.tasks),
                "clock_offset_s": self.clock.offset_s,
            }

    def timeline(self, label: str | None = None) -> dict[str, Any]:
        """``GET /sim/timeline``: each retained task's times and poll count, optionally of one
        account label; a benchmark's ground truth for utilisation and detection delays."""
        with self.lock:
            tasks = self.tasks.retained(self.clock.now(), self._config.retention_s)
            mine = [task for task in tasks if label is None or task.account.label == label]
            return {"tasks": [task.timeline() for task in mine]}

    def account_stats(self, key: str) -> dict[str, Any]:
        """One key's account counters (zeros when the key was never used)."""
        with self.lock:
            label = key_digest(key)[:12]
            account = self.accounts.by_label(label)
            if account is None:
                account = Account(label=label, credits=self._config.initial_credits)
            return account.snapshot(self.clock.now())


def not_found_body(task_id: str) -> dict[str, Any]:
    """What BFL answers for an unknown or expired id: HTTP 200 with this status."""
    return {
        "id": task_id,
        "status": TaskStatus.TASK_NOT_FOUND.value,
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }
