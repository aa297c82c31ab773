"""Injected faults as fluxq's client sees them: 5xx, slow answers, dropped and lost responses.

Each fault rate is set to 1 for one test, so the outcome is certain, not probable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxq.config.errors import DownloadFailed, OutcomeUnknown, ReadFailed, ServerError
from fluxq.config.requests import FluxPro11Inputs
from fluxq.simulator import SimulatorServer
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import wait_terminal

REQUEST = FluxPro11Inputs(prompt="x")


@pytest.mark.parametrize("code", [500, 503])
def test_submit_5xx_faults_raise_server_error_and_create_nothing(
    sim: SimulatorServer, client: BFLClient, code: int
) -> None:
    # Given every submit failing with ``code``
    sim.configure(**{f"submit_{code}_rate": 1.0})
    # When fluxq submits, Then ServerError with that status, and no task was billed
    with pytest.raises(ServerError) as caught:
        client.submit("flux-pro-1.1", REQUEST)
    assert caught.value.status_code == code
    assert sim.stats(KEY)["submits"] == 0
    assert sim.stats()["counters"][f"fault_submit_{code}"] == 1


@pytest.mark.parametrize("code", [500, 503])
def test_poll_5xx_faults_raise_server_error(
    sim: SimulatorServer, client: BFLClient, code: int
) -> None:
    # Given a submitted task and every poll failing with ``code``
    submitted = client.submit("flux-pro-1.1", REQUEST)
    sim.configure(**{f"poll_{code}_rate": 1.0})
    # When fluxq polls, Then ServerError with that status
    with pytest.raises(ServerError) as caught:
        client.get_result(submitted.polling_url)
    assert caught.value.status_code == code
    # And once the fault stops, the task is there
    sim.configure(**{f"poll_{code}_rate": 0.0})
    assert wait_terminal(client, submitted.polling_url).status is Status.READY


def test_a_dropped_submit_connection_is_outcome_unknown_and_creates_no_task(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given submits whose connection breaks mid-response before a task exists
    sim.configure(submit_drop_rate=1.0)
    # When fluxq submits, Then it cannot know the outcome (the request was sent)
    with pytest.raises(OutcomeUnknown):
        client.submit("flux-pro-1.1", REQUEST)
    # And indeed nothing was created or billed
    assert sim.stats(KEY)["submits"] == 0
    assert sim.stats()["counters"]["fault_submit_drop"] == 1


def test_a_lost_submit_response_is_outcome_unknown_but_the_task_exists_and_is_billed(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given submits accepted and billed whose response is then lost
    sim.configure(submit_lost_rate=1.0)
    # When fluxq submits, Then OutcomeUnknown
    with pytest.raises(OutcomeUnknown):
        client.submit("flux-pro-1.1", REQUEST)
    # And the simulator's truth: one task, billed, its response lost
    stats = sim.stats(KEY)
    assert (stats["submits"], stats["credits_spent"], stats["lost_responses"]) == (1, 4, 1)
    # And resubmitting (no idempotency key) bills a second task, visible as a duplicate
    sim.configure(submit_lost_rate=0.0)
    client.submit("flux-pro-1.1", REQUEST)
    assert sim.stats(KEY)["duplicate_submits"] == 1


def test_a_dropped_poll_connection_is_a_transport_error(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a task and polls whose connection breaks mid-response
    submitted = client.submit("flux-pro-1.1", REQUEST)
    sim.configure(poll_drop_rate=1.0)
    # When fluxq polls, Then a read-only call broke off: ReadFailed (safe to repeat)
    with pytest.raises(ReadFailed):
        client.get_result(submitted.polling_url)


def test_a_dropped_download_is_a_transport_error_and_leaves_no_file(
    sim: SimulatorServer, client: BFLClient, tmp_path: Path
) -> None:
    # Given a sample URL and downloads breaking off half way
    result = wait_terminal(client, client.submit("flux-pro-1.1", REQUEST).polling_url)
    assert result.sample_url is not None
    sim.configure(download_drop_rate=1.0)
    # When fluxq downloads, Then ReadFailed and no partial file remains
    with pytest.raises(ReadFailed):
        client.download(result.sample_url, tmp_path / "half.jpeg")
    assert not (tmp_path / "half.jpeg").exists()


def test_a_refused_download_is_a_403_for_a_valid_url_and_serves_nothing(
    sim: SimulatorServer, client: BFLClient, tmp_path: Path
) -> None:
    # Given a valid, unexpired sample URL and a delivery host refusing every download
    result = wait_terminal(client, client.submit("flux-pro-1.1", REQUEST).polling_url)
    assert result.sample_url is not None
    sim.configure(download_403_rate=1.0)
    # When fluxq downloads, Then DownloadFailed with 403, no file, and the fault counted
    with pytest.raises(DownloadFailed) as caught:
        client.download(result.sample_url, tmp_path / "refused.jpeg")
    assert caught.value.status_code == 403
    assert not (tmp_path / "refused.jpeg").exists()
    assert sim.stats()["counters"]["fault_download_403"] == 1
    # And once the host is well again, the same URL serves the image
    sim.configure(download_403_rate=0.0)
    assert client.download(result.sample_url, tmp_path / "served.jpeg").size_bytes > 0


def test_slow_submits_delay_submits_only_and_create_the_task_after_the_delay(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given submits (only) answered after 0.3 s
    sim.configure(submit_slow_rate=1.0, slow_delay_s=0.3)
    # When fluxq submits, Then the answer takes at least 0.3 s
    started = time.monotonic()
    submitted = client.submit("flux-pro-1.1", REQUEST)
    assert time.monotonic() - started >= 0.3
    # And a poll is answered at once
    started = time.monotonic()
    client.get_result(submitted.polling_url)
    assert time.monotonic() - started < 0.3
    assert sim.stats()["counters"]["fault_slow"] == 1


def test_slow_answers_are_delayed_by_slow_delay_s(sim: SimulatorServer, client: BFLClient) -> None:
    # Given every answer delayed by 0.2 s (wall-clock: client timeouts are wall-clock)
    sim.configure(slow_rate=1.0, slow_delay_s=0.2)
    # When fluxq submits, Then the answer takes at least 0.2 s
    started = time.monotonic()
    client.submit("flux-pro-1.1", REQUEST)
    assert time.monotonic() - started >= 0.2


def test_a_slow_submit_beyond_the_read_timeout_is_outcome_unknown(
    sim: SimulatorServer, client_for: Callable[..., BFLClient]
) -> None:
    # Given a client with a 0.05 s read timeout and answers delayed 0.3 s
    client = client_for(http_read_timeout_s=0.05)
    sim.configure(slow_rate=1.0, slow_delay_s=0.3)
    # When it submits, Then the request was sent but no answer came in time
    with pytest.raises(OutcomeUnknown):
        client.submit("flux-pro-1.1", REQUEST)


def test_fault_dice_are_reproducible_with_a_seed(sim: SimulatorServer, client: BFLClient) -> None:
    # Given a 50 % submit 503 rate and a fixed rng_seed
    def outcomes() -> list[bool]:
        sim.reset()
        failed = []
        for _ in range(12):
            try:
                client.submit("flux-pro-1.1", REQUEST)
                failed.append(False)
            except ServerError:
                failed.append(True)
        return failed

    sim.configure(submit_503_rate=0.5, rng_seed=99)
    # When the same sequence is run twice, Then the same submits fail, some but not all
    first, second = outcomes(), outcomes()
    assert first == second
    assert any(first)
    assert not all(first)
