"""Task lifecycle: Pending with rising progress, then Ready, Error or moderated; Task not found.

Time-scaled to milliseconds; retention and latency boundaries use the advanced clock.
"""

from __future__ import annotations

import time
import uuid

from fluxq.config.requests import FluxPro11Inputs
from fluxq.simulator import SimulatorServer
from fluxq.workers.bfl.client import BFLClient, Status
from tests.support.env import KEY
from tests.support.simulator import LONG, wait_terminal


def _submit(client: BFLClient, prompt: str = "a cat") -> str:
    return client.submit("flux-pro-1.1", FluxPro11Inputs(prompt=prompt)).polling_url


def test_pending_progress_rises_until_the_task_is_ready(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a model taking 150 model seconds (150 ms)
    sim.configure(latency={"default": "fixed:150"})
    polling_url = _submit(client)
    # When it is polled every few milliseconds until terminal
    seen: list[float] = []
    result = client.get_result(polling_url)
    while result.status is Status.PENDING:
        assert result.progress is not None
        seen.append(result.progress)
        time.sleep(0.01)
        result = client.get_result(polling_url)
    # Then progress stayed within 0..1, never fell, took several values, and the task is Ready
    assert result.status is Status.READY
    assert all(0 <= p < 1 for p in seen)
    assert seen == sorted(seen)
    assert len(set(seen)) >= 3


def test_progress_is_null_when_switched_off(sim: SimulatorServer, client: BFLClient) -> None:
    # Given progress reporting off and a long task
    sim.configure(report_progress=False, latency={"default": LONG})
    # When it is polled, Then it is Pending without progress
    result = client.get_result(_submit(client))
    assert (result.status, result.progress) == (Status.PENDING, None)


def test_time_scale_shrinks_model_seconds(sim: SimulatorServer, client: BFLClient) -> None:
    # Given a "5 s" model at time_scale 0.01 (50 ms)
    sim.configure(time_scale=0.01, latency={"flux-pro-1.1": "fixed:5"})
    started = time.monotonic()
    polling_url = _submit(client)
    # When polled at once, Then Pending; when polled to the end, Ready after about 50 ms
    assert client.get_result(polling_url).status is Status.PENDING
    assert wait_terminal(client, polling_url).status is Status.READY
    assert 0.045 <= time.monotonic() - started < 1.0


def test_prompts_matching_the_regex_are_request_moderated_at_the_first_poll(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given the default trigger in a prompt and a long latency
    sim.configure(latency={"default": LONG})
    # When the first poll comes, Then it is already Request Moderated with reasons
    result = client.get_result(_submit(client, "a [request-moderated] thing"))
    assert result.status is Status.REQUEST_MODERATED
    assert result.raw_status == "Request Moderated"
    assert result.moderation_reasons == ("Derivative Works Filter",)
    assert result.sample_url is None


def test_the_request_moderation_regex_is_configurable(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a regex matching "forbidden" in any case
    sim.configure(request_moderation_regex="(?i)forbidden")
    # When such a prompt is submitted, Then it is moderated; other prompts are not
    assert client.get_result(_submit(client, "A Forbidden City")).status is Status.REQUEST_MODERATED
    assert wait_terminal(client, _submit(client, "a fine city")).status is Status.READY


def test_content_moderated_tasks_carry_moderation_reasons(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given every output flagged after generation
    sim.configure(content_moderated_rate=1.0, content_moderation_reasons=["NSFW", "Gore"])
    # When a task finishes
    result = wait_terminal(client, _submit(client))
    # Then it is Content Moderated with details["Moderation Reasons"] and no sample
    assert result.status is Status.CONTENT_MODERATED
    assert result.raw_status == "Content Moderated"
    assert result.details == {"Moderation Reasons": ["NSFW", "Gore"]}
    assert result.sample_url is None


def test_a_prompt_trigger_makes_content_moderation_deterministic(client: BFLClient) -> None:
    # Given the default content trigger in a prompt
    # When the task finishes, Then it is Content Moderated
    result = wait_terminal(client, _submit(client, "x [content-moderated]"))
    assert result.status is Status.CONTENT_MODERATED


def test_failed_generations_end_in_error(sim: SimulatorServer, client: BFLClient) -> None:
    # Given an error trigger in one prompt, and then an error rate of 1
    by_prompt = wait_terminal(client, _submit(client, "x [error]"))
    sim.configure(error_rate=1.0)
    by_rate = wait_terminal(client, _submit(client))
    # Then both end in Error
    assert by_prompt.status is by_rate.status is Status.ERROR
    assert by_rate.raw_status == "Error"
    # (only Error is compared: under load, an earlier test's task on this shared simulator
    # may still come out Ready after the reset)
    assert sim.stats(KEY)["outcomes"].get("Error") == 2


def test_an_unknown_id_is_task_not_found_with_http_200(client: BFLClient) -> None:
    # Given an id nobody submitted
    # When polled, Then "Task not found" (not a 404)
    result = client.get_result_by_id(str(uuid.uuid4()))
    assert result.status is Status.TASK_NOT_FOUND
    assert result.raw_status == "Task not found"


def test_results_are_task_not_found_after_the_retention_period(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a Ready task and a retention of 60 s
    sim.configure(retention_s=60)
    polling_url = _submit(client)
    assert wait_terminal(client, polling_url).status is Status.READY
    # When 61 s pass, Then the same URL answers Task not found
    sim.advance_clock(61)
    assert client.get_result(polling_url).status is Status.TASK_NOT_FOUND


def test_a_task_can_be_not_found_for_a_while_right_after_submit(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a 300 model-second (0.3 s) window of "Task not found" after submit
    sim.configure(not_found_after_submit_s=300, latency={"default": "fixed:1000"})
    polling_url = _submit(client)
    # When polled at once, Then Task not found; later the task appears, then finishes Ready
    assert client.get_result(polling_url).status is Status.TASK_NOT_FOUND
    sim.advance_clock(0.3)
    assert client.get_result(polling_url).status is Status.PENDING
    sim.advance_clock(1.0)
    assert client.get_result(polling_url).status is Status.READY


def test_every_bfl_status_string_is_produced_exactly(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given one task per outcome, each taking 1 s
    sim.configure(latency={"default": "fixed:1000"})
    urls = {prompt: _submit(client, prompt) for prompt in ("ok", "[error]", "[content-moderated]")}
    moderated = _submit(client, "[request-moderated]")
    # When polled: at once, after 2 s, and for an unknown id
    seen = {client.get_result(urls["ok"]).raw_status, client.get_result(moderated).raw_status}
    sim.advance_clock(2)
    seen |= {client.get_result(url).raw_status for url in urls.values()}
    seen.add(client.get_result_by_id(str(uuid.uuid4())).raw_status)
    # Then the six strings of BFL's StatusResponse enum were all produced
    assert seen == {
        "Pending",
        "Ready",
        "Error",
        "Content Moderated",
        "Request Moderated",
        "Task not found",
    }
