"""The worker supervisor restarts a crashed worker process with backoff instead of giving up."""

from __future__ import annotations

import sys
import time

from fluxq.workers.process.supervisor import (
    STABLE_AFTER_S,
    Supervisor,
    WorkerSpec,
    restart_delay_s,
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def wait_exited(supervisor: Supervisor) -> None:
    deadline = time.monotonic() + 10
    while any(p.poll() is None for p in supervisor.children):
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.02)


def test_restart_delays_grow_per_crash_in_a_row_and_stay_bounded() -> None:
    delays = [restart_delay_s(n) for n in range(1, 9)]
    assert delays == sorted(delays)
    assert delays[0] == 1.0
    assert delays[-1] == 30.0


def test_a_crashed_worker_process_is_restarted_after_its_backoff() -> None:
    # Given a supervisor whose only child exits at once with code 3
    clock = FakeClock()
    spec = WorkerSpec("crashy", ("fluxq.submit",), 1)
    supervisor = Supervisor(
        [spec],
        argv_for=lambda s: [sys.executable, "-c", "import sys; sys.exit(3)"],
        env={},
        clock=clock,
    )
    supervisor.start()
    first = supervisor.children[0]
    try:
        wait_exited(supervisor)
        # When it is checked: the exit is noticed and a restart scheduled, not yet done
        supervisor.check()
        assert supervisor.children == []
        assert supervisor.restarts == 0
        # Then once the backoff has passed it is started again, as a new process
        clock.now_s += restart_delay_s(1)
        supervisor.check()
        assert supervisor.restarts == 1
        assert supervisor.children[0].pid != first.pid
        # And a second crash in a row waits longer
        wait_exited(supervisor)
        supervisor.check()
        clock.now_s += restart_delay_s(1)
        supervisor.check()
        assert supervisor.restarts == 1
        clock.now_s += restart_delay_s(2)
        supervisor.check()
        assert supervisor.restarts == 2
    finally:
        supervisor.stop()
    assert all(p.poll() is not None for p in supervisor.children)


def test_a_worker_that_ran_long_before_exiting_restarts_after_the_first_delay() -> None:
    clock = FakeClock()
    supervisor = Supervisor(
        [WorkerSpec("w", ("q",), 1)],
        argv_for=lambda s: [sys.executable, "-c", "pass"],
        env={},
        clock=clock,
    )
    supervisor.start()
    try:
        wait_exited(supervisor)
        clock.now_s += STABLE_AFTER_S + 1
        supervisor.check()
        clock.now_s += restart_delay_s(1)
        supervisor.check()
        assert supervisor.restarts == 1
    finally:
        supervisor.stop()
