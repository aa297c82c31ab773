"""Why a wait is not moving, said while it waits: no worker consuming, admission paused.

``fluxq enqueue --wait``, ``fluxq batch status --watch`` and ``fluxq run`` each make a
``WaitWatch`` and call ``check()`` on every refresh; it says each new finding once (through the
caller's ``say``), says when it is over, and returns the findings standing now (for a live view).

**No worker** is found by Celery's broadcast ping (``app.control.ping``), run on a thread of
its own every ``PING_EVERY_S`` so the view never stalls; the first answer comes within
``PING_TIMEOUT_S`` of the start, well inside 10 s. Chosen over cheaper signals because:

- a reply comes from a worker's own consumer, so it means "something reads fluxq's queues now";
- "messages wait in a queue and nothing takes them" needs a wait of its own before it can say
  anything, and sees nothing when there is no message at all: a backlog whose slots are all held
  by the leases of a worker that died, or jobs queued behind a pause;
- the workers' heartbeat in Redis (``fluxq:workers``) is written once per sweep interval (10 s by
  default), too coarse to answer within 10 s.

It costs one broadcast and one reply queue per ping, at most one ping every ``PING_EVERY_S``.

**Paused admission** is read from Redis on each check, one HMGET: the key's pause
(``fluxq:cap:{k}``: 402 out of credits, 401/403 key refused, a 429's Retry-After; what
``fluxq status`` shows) and, for a batch, its hash's ``paused`` (``budget``, ``cancelled``).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

import redis

from config.settings import Settings
from workers.state import keys
from workers.state.limiter import PauseKind, pause_in_force

if TYPE_CHECKING:
    from celery import Celery

PING_TIMEOUT_S = 2.0
"""How long one ping waits for a worker's reply."""
PING_EVERY_S = 3.0
"""Pause between pings."""

NO_WORKER = (
    "no worker is consuming fluxq's queues (none answered a ping within {timeout:g} s): start "
    "one with `fluxq worker` on the same Redis and BFL_API_KEY; jobs wait in Redis until then"
)
WORKER_BACK = "a worker is consuming fluxq's queues now"
ADMISSION_OPEN = "admission is open again"

Ping = Callable[[], int]
"""Counts the workers that answer a ping; raises when the broker cannot be asked."""


def celery_ping(settings: Settings) -> Ping:
    """A ``Ping`` through Celery's broadcast on ``settings.redis_url`` (the app made lazily, on
    the pinging thread, so the caller's first refresh does not wait for Celery to load)."""
    app: list[Celery] = []

    def ping() -> int:
        if not app:
            from workers.celery_app import make_celery  # lazy: Celery loads on the ping thread

            app.append(make_celery(settings))
        replies = app[0].control.ping(timeout=PING_TIMEOUT_S, limit=1)
        return len(replies or [])

    return ping


class _Pinger:
    """Pings on a daemon thread; ``replies`` is the last count (None: no answer yet)."""

    def __init__(self, ping: Ping) -> None:
        self.replies: int | None = None
        self._ping = ping
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluxq-wait-ping", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.replies = self._ping()
            except Exception:  # the broker is unreachable: say nothing about workers
                self.replies = None
            self._stop.wait(PING_EVERY_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=PING_TIMEOUT_S + 1.0)


class WaitWatch:
    """Findings about one wait: on ``check()``, each new one is said once, and its end too."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis[str],
        *,
        say: Callable[[str], None],
        batch: str | None = None,
        ping: Ping | None = None,
        grace_s: float = 0.0,
        worker: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """``batch``: also report the batch's own pause. ``grace_s``: say nothing about workers
        before this long (a worker being started). ``worker``: a worker process this command
        started; its exit is a finding and ends the wait (``gave_up``)."""
        self._settings = settings
        self._redis = client
        self._say = say
        self._batch = batch
        self._label = keys.key_label(settings.bfl_api_key)
        self._since = time.monotonic()
        self._grace_s = grace_s
        self._worker = worker
        self._said: set[str] = set()
        self._pinger = _Pinger(ping if ping is not None else celery_ping(settings))
        self.gave_up = False

    def check(self) -> list[str]:
        """The findings standing now; new ones are said, ended ones said to be over."""
        now = self._findings()
        for text in now:
            if text not in self._said:
                self._say(text)
        for text in self._said - set(now):
            if text.startswith("no worker"):
                self._say(WORKER_BACK)
            elif text.startswith("admission is paused"):
                self._say(ADMISSION_OPEN)
        self._said = set(now)
        return now

    def _findings(self) -> list[str]:
        found: list[str] = []
        if self._worker is not None and self._worker.poll() is not None:
            self.gave_up = True
            found.append(f"the worker this command started exited (code {self._worker.returncode})")
        elif self._no_worker():
            found.append(NO_WORKER.format(timeout=PING_TIMEOUT_S))
        with suppress(redis.RedisError):  # Redis unreachable: the caller's own read says so
            found += self._pauses()
        return found

    def _no_worker(self) -> bool:
        if time.monotonic() - self._since < self._grace_s:
            return False
        return self._pinger.replies == 0

    def _pauses(self) -> list[str]:
        found: list[str] = []
        until, kind, detail = self._redis.hmget(
            keys.cap_state(self._label), "paused_until", "pause_kind", "pause_detail"
        )
        pause = pause_in_force(until, kind, detail, time.time())
        if pause is not None:
            found.append(f"admission is paused: {pause}; {self._pause_hint(pause.kind, until)}")
        if self._batch is not None:
            paused = self._redis.hget(keys.batch(self._batch), "paused")
            if paused == "budget":
                found.append(
                    f"batch {self._batch} is paused: its next line would pass its budget; "
                    f"`fluxq batch resume {self._batch} --budget MORE` goes on"
                )
            elif paused == "cancelled":
                found.append(f"batch {self._batch} was cancelled: its waiting lines will not run")
        return found

    def _pause_hint(self, kind: PauseKind, until: str | None) -> str:
        if kind is PauseKind.OUT_OF_CREDITS:
            every = self._settings.credits_check_interval_s
            return (
                "jobs stay queued and go on by themselves when credits return (checked every "
                f"{every:g} s), or at once after `fluxq resume`"
            )
        if kind is PauseKind.NOT_AUTHORISED:
            return "jobs stay queued: fix BFL_API_KEY for the workers, then `fluxq resume`"
        when = time.strftime("%H:%M:%S", time.localtime(float(until))) if until else "later"
        return f"jobs stay queued until {when}, then go on by themselves"

    def close(self) -> None:
        self._pinger.close()
