"""The simulator's clock: wall-clock epoch seconds plus an offset tests can advance.

Advancing it expires signed URLs and retained results at once, without sleeping through them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


class Clock:
    """``time.time()`` shifted forward by everything passed to ``advance``; thread-safe."""

    def __init__(self) -> None:
        self._offset_s = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Epoch seconds as the simulator sees them."""
        return time.time() + self._offset_s

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` into the future (never back: time-based state must not rewind)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset_s += seconds

    @property
    def offset_s(self) -> float:
        """How far ahead of the wall clock the simulator is."""
        return self._offset_s


@dataclass(frozen=True)
class ListenerURLs:
    """Base URLs of the three listeners: the API, the polling "cluster" host and delivery."""

    api: str
    polling: str
    delivery: str
