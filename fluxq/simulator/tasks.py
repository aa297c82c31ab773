"""Simulated BFL tasks: everything is decided at submit and the status is computed from timestamps.

No background loop advances a task: a poll at time t reads Pending, Ready, Error... from the clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fluxq.simulator.accounts import Account


class TaskStatus(StrEnum):
    """BFL's exact status strings (openapi.json ``StatusResponse``)."""

    PENDING = "Pending"
    READY = "Ready"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    ERROR = "Error"
    TASK_NOT_FOUND = "Task not found"


@dataclass(slots=True)
class Task:
    """One generation: its request, its fate (``outcome`` at ``ready_at``) and its poll count.

    ``duration_s`` is ``ready_at - created_at`` as drawn, before epoch-sized floats round it."""

    id: str
    account: Account
    endpoint: str
    cap_group: str | None
    prompt: str
    seed: int
    width: int
    height: int
    fmt: str
    created_at: float
    visible_at: float
    ready_at: float
    outcome: TaskStatus
    cost: float
    delivery_base: str
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    duration_s: float = 0.0
    samples: int = 1
    """How many results it makes: a video draft batch's ``batch``, else 1."""
    draft: bool = False
    """A video draft: its result carries draft cache URLs."""
    video_s: float = 0.0
    """A video's length in seconds (its MP4's duration); 0 for an image."""
    polls: int = 0
    sample_expires_at: float | None = None
    first_terminal_poll_at: float | None = None
    first_download_at: float | None = None

    def timeline(self) -> dict[str, Any]:
        """When it was created, ran, was seen finished and was fetched: what benchmarks measure."""
        return {
            "id": self.id,
            "account": self.account.label,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "outcome": self.outcome.value,
            "created_at": self.created_at,
            "ready_at": self.ready_at,
            "duration_s": self.duration_s,
            "polls": self.polls,
            "first_terminal_poll_at": self.first_terminal_poll_at,
            "first_download_at": self.first_download_at,
        }


@dataclass(frozen=True, slots=True)
class TaskView:
    """What a poll at one instant sees."""

    status: TaskStatus
    progress: float | None


def view_task(task: Task, now: float, *, report_progress: bool) -> TaskView:
    """The status of ``task`` at ``now``, with progress rising linearly while Pending."""
    if now < task.visible_at:
        # UNCONFIRMED but plausible: a freshly created task not yet replicated to the polled host.
        return TaskView(TaskStatus.TASK_NOT_FOUND, None)
    if now >= task.ready_at:
        return TaskView(task.outcome, None)
    if not report_progress:
        return TaskView(TaskStatus.PENDING, None)
    span = task.ready_at - task.created_at
    done = (now - task.created_at) / span if span > 0 else 1.0
    return TaskView(TaskStatus.PENDING, round(min(max(done, 0.0), 0.99), 3))


class TaskStore:
    """Tasks by id, forgotten ``retention_s`` after they are ready."""

    def __init__(self) -> None:
        self._by_id: dict[str, Task] = {}
        self._order: deque[Task] = deque()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, task: Task) -> None:
        """Keep ``task`` until it expires."""
        self._by_id[task.id] = task
        self._order.append(task)

    def get(self, task_id: str, now: float, retention_s: float) -> Task | None:
        """The task, or None when unknown or older than the retention period."""
        self.purge(now, retention_s)
        task = self._by_id.get(task_id)
        if task is None or now >= task.ready_at + retention_s:
            return None
        return task

    def retained(self, now: float, retention_s: float) -> list[Task]:
        """Every task still within its retention period, in submission order."""
        self.purge(now, retention_s)
        return [task for task in self._by_id.values() if now < task.ready_at + retention_s]

    def purge(self, now: float, retention_s: float) -> None:
        """Drop expired tasks from the front (submission order), bounding memory.

        A slow task at the front delays purging the ones behind it; ``get`` still hides them.
        """
        while self._order and now >= self._order[0].ready_at + retention_s:
            expired = self._order.popleft()
            self._by_id.pop(expired.id, None)

    def clear(self) -> None:
        """Forget every task."""
        self._by_id.clear()
        self._order.clear()
