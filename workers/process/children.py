"""Child processes that never outlive their parent and never import the user's modules.

Every process fluxq starts (Celery workers, redis-server) asks the kernel for a signal when its
parent dies (Linux ``PR_SET_PDEATHSIG``), so even a SIGKILL of ``fluxq worker`` leaves nothing.
Python children start with ``-P``: the working directory is not put on ``sys.path``, so a user's
``tasks.py`` or ``config/`` cannot shadow fluxq's packages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when its parent thread dies."""

STOP_TIMEOUT_S = 20.0
"""How long a child gets to stop after SIGTERM before it is killed."""


def python_argv(module: str, *args: str) -> list[str]:
    """``python -P -m module args…`` with this interpreter (so this virtualenv)."""
    return [sys.executable, "-P", "-m", module, *args]


def _die_with(parent_pid: int, sig: int) -> Callable[[], None]:
    def set_parent_death_signal() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died before prctl took effect: then nobody will signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return set_parent_death_signal


def start_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that gets ``death_signal`` when this process dies."""
    return subprocess.Popen(  # noqa: S603 - argv is built by fluxq, never from user text
        list(argv),
        env=None if env is None else dict(env),
        stdout=stdout,
        stderr=stderr,
        preexec_fn=_die_with(os.getpid(), death_signal),
    )


def stop_child(process: subprocess.Popen[bytes], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL: a child is always gone when this returns."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
