"""Why a wait is not moving, said while it waits: no worker consuming, admission paused, every
slot taken (by what, until when).

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

**Paused admission** is read from Redis on each check: the key's pause (``fluxq:cap:{k}``: 402
out of credits, 401/403 key refused, a 429's Retry-After; what ``fluxq status`` shows) and, for a
batch, its hash's ``paused`` (``budget``, ``cancelled``).

**Blocked admission**: in the same round trip each check reads the key's slots
(``fluxq.cli.batch_view.slot_reads``: leases held, the holds for doubtful POSTs, the AIMD cap,
the last POST BFL refused) and the progress of what is waited for (a batch's counters, a job's
state), then the holders' jobs in a second (``holder_reads``: at BFL or being sent, and for which
batch). When it has work waiting and admission takes nothing (every slot it allows taken, or a
pause), it says in one line what holds the slots (and the last POST BFL refused) and
when admission expects to take a job again (``batch_view.blocked_reason``): at once when none of
the waited-for jobs holds a slot, else once nothing moved for ``STUCK_AFTER_S``. A reason that
changes is said again at most every ``RESAY_EVERY_S``, so a log does not fill with each step of
a backoff.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from fluxq.cli.batch_view import (
    KeySlots,
    KeyView,
    batch_reason,
    blocked_reason,
    clock,
    holder_reads,
    key_slots_from,
    slot_reads,
    with_holders,
)
from fluxq.config.settings import Settings
from fluxq.workers.state import keys
from fluxq.workers.state.batches import BatchStatus
from fluxq.workers.state.jobs import State
from fluxq.workers.state.limiter import PauseKind

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

STUCK_AFTER_S = 5.0
"""A wait whose jobs hold slots is explained once nothing moved (none sent, readied or ended) for
this long; one whose jobs hold none, at once."""
RESAY_EVERY_S = 30.0
"""A blocked reason whose text changes (counts, the next try) is said again at most this often."""
STICKY_S = 3.0
"""A pause's blocked reason stays shown this long after admission looked open, unless something
moved: a Retry-After pause may end and start again within a moment."""

BLOCKED = "blocked"
"""The key of the blocked-admission finding (said by its own rule, see ``RESAY_EVERY_S``)."""

_BATCH_FIELDS = ("paused", *(state.value for state in State))


def read_key_slots(client: redis.Redis[str], settings: Settings, *, now_s: float) -> KeySlots:
    """The slots of the key in ``settings`` and what holds them (two round trips at most)."""
    slots = key_slots_from(
        _run(client, slot_reads(keys.key_label(settings.bfl_api_key))),
        key_cap=settings.active_cap,
        aimd_interval_s=settings.aimd_increase_interval_s,
        now_s=now_s,
    )
    return read_holders(client, slots)


def read_holders(client: redis.Redis[str], slots: KeySlots) -> KeySlots:
    """``slots`` with its holders told apart (at BFL, being sent, by batch), one round trip."""
    commands = holder_reads(slots)
    return with_holders(slots, _run(client, commands)) if commands else slots


def read_batch_view(
    client: redis.Redis[str], settings: Settings, status: BatchStatus, *, now_s: float
) -> KeyView:
    """The key's slots for a batch's status, and why the batch is blocked if it is (the same
    reads and words as ``fluxq batch status``'s fast path)."""
    slots = read_key_slots(client, settings, now_s=now_s)
    return KeyView(slots, batch_reason(status, slots, now_s=now_s))


def read_key_view(
    client: redis.Redis[str], settings: Settings, *, now_s: float, waiting: bool
) -> KeyView:
    """The key's slots and, when jobs are ``waiting`` and admission takes none, why."""
    slots = read_key_slots(client, settings, now_s=now_s)
    return KeyView(slots, blocked_reason(slots, now_s=now_s) if waiting else None)


def _run(client: redis.Redis[str], commands: Sequence[tuple[str, ...]]) -> list[object]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    return list(pipe.execute())


@dataclass(frozen=True)
class _Subject:
    """What a wait waits for, as read on one check."""

    name: str
    """"batch night", "job j-1": how a finding names it."""
    waiting: bool
    """It has work that needs a slot (queued lines, or the job is queued)."""
    holding: int
    """Slots its own jobs hold (admitted or submitted)."""
    progress: tuple[str, ...]
    """Changes when one of its jobs is sent, readied or ends (not on a requeue)."""
    paused: str | None
    """A batch's own pause (budget, cancelled)."""


Ping = Callable[[], int]
"""Counts the workers that answer a ping; raises when the broker cannot be asked."""


def celery_ping(settings: Settings) -> Ping:
    """A ``Ping`` through Celery's broadcast on ``settings.redis_url`` (the app made lazily, on
    the pinging thread, so the caller's first refresh does not wait for Celery to load)."""
    app: list[Celery] = []

    def ping() -> int:
        if not app:
            from fluxq.workers.celery_app import (
                make_celery,  # lazy: Celery loads on the ping thread
            )

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
        job: str | None = None,
        ping: Ping | None = None,
        grace_s: float = 0.0,
        worker: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """``batch``: report the batch's own pause and why its lines do not move; ``job``: why
        that job does not move. ``grace_s``: say nothing about workers before this long (a
        worker being started). ``worker``: a worker process this command started; its exit is a
        finding and ends the wait (``gave_up``)."""
        self._settings = settings
        self._redis = client
        self._say = say
        self._batch = batch
        self._job = job
        self._label = keys.key_label(settings.bfl_api_key)
        self._since = time.monotonic()
        self._grace_s = grace_s
        self._worker = worker
        self._said: set[str] = set()
        self._progress: tuple[str, ...] | None = None
        self._moved_at = self._since
        self._blocked: tuple[str, float] | None = None
        """The standing blocked reason, and when it was last found if it may outlast that."""
        self._blocked_said: tuple[str, float] | None = None
        """The blocked reason last said, and when."""
        self.slots: KeySlots | None = None
        """The key's slots as last read (for a live view), None before the first read."""
        self._pinger = _Pinger(ping if ping is not None else celery_ping(settings))
        self.gave_up = False

    def check(self) -> list[str]:
        """The findings standing now; new ones are said, ended ones said to be over."""
        found = self._findings()
        texts = [text for _, text in found]
        for key, text in found:
            if key == BLOCKED:
                self._say_blocked(text)
            elif text not in self._said:
                self._say(text)
        for text in self._said - set(texts):
            if text.startswith("no worker"):
                self._say(WORKER_BACK)
            elif text.startswith("admission is paused"):
                self._say(ADMISSION_OPEN)
        self._said = {text for key, text in found if key != BLOCKED}
        return texts

    def _say_blocked(self, text: str) -> None:
        """Said at once the first time; after that, a new text at most every RESAY_EVERY_S."""
        now = time.monotonic()
        last = self._blocked_said
        if last is not None and (last[0] == text or now - last[1] < RESAY_EVERY_S):
            return
        self._say(text)
        self._blocked_said = (text, now)

    def _findings(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self._worker is not None and self._worker.poll() is not None:
            self.gave_up = True
            text = f"the worker this command started exited (code {self._worker.returncode})"
            found.append((text, text))
        elif self._no_worker():
            text = NO_WORKER.format(timeout=PING_TIMEOUT_S)
            found.append((text, text))
        with suppress(redis.RedisError):  # Redis unreachable: the caller's own read says so
            found += self._admission()
        return found

    def _no_worker(self) -> bool:
        if time.monotonic() - self._since < self._grace_s:
            return False
        return self._pinger.replies == 0

    def _admission(self) -> list[tuple[str, str]]:
        """The key's pause, the batch's own pause, and why admission takes nothing (one read)."""
        now_s = time.time()
        reads = slot_reads(self._label)
        commands = list(reads)
        if self._batch is not None:
            commands.append(("HMGET", keys.batch(self._batch), *_BATCH_FIELDS))
        elif self._job is not None:
            commands.append(("HGET", keys.job(self._job), "state"))
        replies = _run(self._redis, commands)
        slots = key_slots_from(
            replies[: len(reads)],
            key_cap=self._settings.active_cap,
            aimd_interval_s=self._settings.aimd_increase_interval_s,
            now_s=now_s,
        )
        slots = self.slots = read_holders(self._redis, slots)
        subject = self._subject(replies[len(reads)]) if len(replies) > len(reads) else None
        found: list[tuple[str, str]] = []
        if slots.pause_kind is not None:
            text = f"admission is paused: {slots.pause_text}; {self._pause_hint(slots)}"
            found.append((text, text))
        if subject is not None and subject.paused is not None and self._batch is not None:
            text = self._batch_pause(self._batch, subject.paused)
            found.append((text, text))
        if subject is not None:
            blocked = self._blocked_text(subject, slots, now_s)
            if blocked is not None:
                found.append((BLOCKED, blocked))
        return found

    def _subject(self, reply: object) -> _Subject | None:
        if self._batch is not None:
            raw = reply if isinstance(reply, list) else []
            fields = dict(zip(_BATCH_FIELDS, raw, strict=False))
            counts = {state.value: int(fields.get(state.value) or 0) for state in State}
            moving = (State.SUBMITTED, State.READY, State.DONE, State.FAILED, State.CANCELLED)
            return _Subject(
                name=f"batch {self._batch}",
                waiting=counts[State.QUEUED.value] > 0,
                holding=counts[State.ADMITTED.value] + counts[State.SUBMITTED.value],
                progress=tuple(str(counts[state.value]) for state in moving),
                paused=fields.get("paused"),
            )
        if self._job is not None:
            state = reply if isinstance(reply, str) else ""
            waiting = state == State.QUEUED.value
            requeued = state in (State.QUEUED.value, State.ADMITTED.value)
            return _Subject(
                name=f"job {self._job}",
                waiting=waiting,
                holding=0 if waiting else 1,
                progress=("" if requeued else state,),
                paused=None,
            )
        return None

    def _blocked_text(self, subject: _Subject, slots: KeySlots, now_s: float) -> str | None:
        """The standing blocked finding, or None (see the module's "Blocked admission")."""
        now = time.monotonic()
        if subject.progress != self._progress:
            self._progress, self._moved_at, self._blocked = subject.progress, now, None
        reason = None
        # Any other pause is said apart ("admission is paused"), with what resumes it.
        said_apart = slots.pause_kind is not None
        stuck = subject.holding == 0 or now - self._moved_at >= STUCK_AFTER_S
        if subject.waiting and subject.paused is None and not said_apart and stuck:
            whose = ""
            if subject.holding == 0:
                whose = "other batches' jobs" if self._batch is not None else "other jobs"
            reason = blocked_reason(slots, now_s=now_s, whose=whose)
        if reason is not None:
            # Only a pause's reason outlasts a moment of open admission (between two steps of
            # a backoff); any other goes as soon as admission has room.
            self._blocked = (reason, now if slots.pause_kind is not None else -math.inf)
        else:
            over = not subject.waiting or subject.paused is not None or said_apart
            if over or (self._blocked is not None and now - self._blocked[1] > STICKY_S):
                self._blocked = None
        if self._blocked is None:
            return None
        return f"{subject.name} waits: {self._blocked[0]}"

    @staticmethod
    def _batch_pause(batch: str, paused: str) -> str:
        if paused == "budget":
            return (
                f"batch {batch} is paused: its next line would pass its budget; "
                f"`fluxq batch resume {batch} --budget MORE` goes on"
            )
        if paused == "cancelled":
            return f"batch {batch} was cancelled: its waiting lines will not run"
        return f"batch {batch} is paused: {paused}"

    def _pause_hint(self, slots: KeySlots) -> str:
        if slots.pause_kind == PauseKind.OUT_OF_CREDITS.value:
            every = self._settings.credits_check_interval_s
            return (
                "jobs stay queued and go on by themselves when credits return (checked every "
                f"{every:g} s), or at once after `fluxq resume`"
            )
        if slots.pause_kind == PauseKind.NOT_AUTHORISED.value:
            return "jobs stay queued: fix BFL_API_KEY for the workers, then `fluxq resume`"
        if slots.pause_until is None:
            return "jobs stay queued until `fluxq resume`"
        return f"jobs stay queued until {clock(slots.pause_until)}, then go on by themselves"

    def close(self) -> None:
        self._pinger.close()
