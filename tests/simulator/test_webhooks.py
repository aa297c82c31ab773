"""Webhooks: signed POSTs of finished tasks, retried after 1, 5, 30 (scaled) seconds on failure.

A tiny loopback receiver records each POST; the tests wait on it, never sleep blindly.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from fluxq.simulator import SimulatorServer, webhook_signature
from fluxq.workers.bfl.client import BFLClient
from tests.support.env import KEY
from tests.support.webhooks import WebhookReceiver

SECRET = "whsec-test"


def _body(receiver: WebhookReceiver, prompt: str = "a kite") -> dict[str, object]:
    return {"prompt": prompt, "seed": 5, "webhook_url": receiver.url, "webhook_secret": SECRET}


def test_a_finished_task_is_posted_to_its_webhook_with_an_hmac_signature(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given a submit with webhook_url and webhook_secret
    submitted = client.submit_json("flux-pro-1.1", _body(webhook_receiver))
    # When the task finishes
    [received] = webhook_receiver.wait_for(1)
    # Then the payload is {id, status, result: {sample, prompt, seed}, timestamp}
    payload = received.json()
    assert set(payload) == {"id", "status", "result", "timestamp"}
    assert (payload["id"], payload["status"]) == (submitted.id, "Ready")
    assert payload["result"]["prompt"] == "a kite"
    assert payload["result"]["seed"] == 5
    assert httpx.get(payload["result"]["sample"]).status_code == 200
    # And by default the secret comes back verbatim in X-Webhook-Secret (BFL's SDK), unsigned
    assert received.headers["x-webhook-secret"] == SECRET
    assert "x-bfl-signature" not in received.headers
    assert _wait_for_stat(sim, "webhooks_delivered", 1)["webhooks_sent"] == 1


def test_the_hmac_switch_signs_the_body_in_x_bfl_signature(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given the agent guide's form switched on
    sim.configure(webhook_auth="hmac")
    client.submit_json("flux-pro-1.1", _body(webhook_receiver))
    # When delivered
    [received] = webhook_receiver.wait_for(1)
    # Then X-BFL-Signature is sha256=HMAC-SHA256(secret, raw body) and the secret is not sent
    expected = hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.headers["x-bfl-signature"] == f"sha256={expected}"
    assert webhook_signature(SECRET, received.body) == f"sha256={expected}"
    assert "x-webhook-secret" not in received.headers


def test_a_webhook_submit_answers_pending_with_the_webhook_url(
    sim: SimulatorServer, raw: httpx.Client, webhook_receiver: WebhookReceiver
) -> None:
    # Given a submit with webhook_url
    url = f"{sim.base_url}/v1/flux-pro-1.1"
    # When POSTed, Then status Pending and webhook_url are in the answer, polling_url too
    data = raw.post(url, json=_body(webhook_receiver), headers={"x-key": KEY}).json()
    assert data["status"] == "Pending"
    assert data["webhook_url"] == webhook_receiver.url
    assert "polling_url" in data
    # And with the switch off, the answer has no polling_url (the other plausible shape)
    sim.configure(webhook_response_polling_url=False)
    data = raw.post(url, json=_body(webhook_receiver), headers={"x-key": KEY}).json()
    assert set(data) == {"id", "status", "webhook_url", "cost", "input_mp", "output_mp"}


def test_a_failing_receiver_gets_retries_until_it_answers_2xx(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given a receiver answering 500, then 503, then 200 (retries after 1 and 5 ms at 0.001)
    webhook_receiver.statuses = [500, 503]
    client.submit_json("flux-pro-1.1", _body(webhook_receiver))
    # When the task finishes, Then three attempts arrive carrying the same payload
    received = webhook_receiver.wait_for(3)
    assert len({r.json()["id"] for r in received}) == 1
    stats = _wait_for_stat(sim, "webhooks_delivered", 1)
    assert (stats["webhooks_sent"], stats["webhooks_abandoned"]) == (3, 0)


def test_a_receiver_that_never_answers_2xx_is_abandoned_after_the_last_retry(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given two configured retries and a receiver that always fails
    sim.configure(webhook_retry_delays_s=[1, 2])
    webhook_receiver.statuses = [500] * 10
    client.submit_json("flux-pro-1.1", _body(webhook_receiver))
    # When the deliveries run out, Then 3 attempts were made and the webhook is abandoned
    webhook_receiver.wait_for(3)
    stats = _wait_for_stat(sim, "webhooks_abandoned", 1)
    assert stats["webhooks_sent"] == 3


def test_header_name_and_payload_shape_are_configurable(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given another header name and get_result's body as the payload
    sim.configure(
        webhook_auth="hmac",
        webhook_signature_header="X-Signature",
        webhook_payload="result_response",
    )
    client.submit_json("flux-pro-1.1", _body(webhook_receiver, "x [content-moderated]"))
    # When delivered
    [received] = webhook_receiver.wait_for(1)
    # Then the signature is under the new name and the payload carries details
    assert received.headers["x-signature"] == webhook_signature(SECRET, received.body)
    assert "x-bfl-signature" not in received.headers
    payload = received.json()
    assert payload["status"] == "Content Moderated"
    assert payload["details"] == {"Moderation Reasons": ["NSFW"]}


def test_a_webhook_without_a_secret_is_sent_unsigned(
    client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given a webhook_url without webhook_secret
    client.submit_json("flux-pro-1.1", {"prompt": "x", "webhook_url": webhook_receiver.url})
    # When delivered, Then no signature header is sent
    [received] = webhook_receiver.wait_for(1)
    assert "x-bfl-signature" not in received.headers
    assert "x-webhook-secret" not in received.headers


def test_webhooks_to_non_loopback_hosts_are_never_sent(
    sim: SimulatorServer, client: BFLClient
) -> None:
    # Given a webhook_url outside the machine
    client.submit_json("flux-pro-1.1", {"prompt": "x", "webhook_url": "https://example.org/hook"})
    # When the task finishes, Then the simulator refuses to leave loopback
    _wait_for_counter(sim, "webhooks_refused_non_loopback", 1)
    assert sim.stats(KEY)["webhooks_sent"] == 0


def test_the_secret_never_appears_in_stats(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given a delivered, signed webhook
    client.submit_json("flux-pro-1.1", _body(webhook_receiver))
    webhook_receiver.wait_for(1)
    # When stats and config are read, Then neither the secret nor the key is in them
    shown = repr(sim.stats()) + repr(sim.simulator.config.public())
    assert SECRET not in shown
    assert KEY not in shown


def _wait_for_stat(sim: SimulatorServer, name: str, value: int) -> dict[str, object]:
    # The receiver answered before the simulator counted: wait for the count, briefly.
    deadline = time.monotonic() + 3
    while (stats := sim.stats(KEY))[name] != value and time.monotonic() < deadline:
        time.sleep(0.005)
    assert stats[name] == value
    return stats


def _wait_for_counter(sim: SimulatorServer, name: str, value: int) -> None:
    deadline = time.monotonic() + 3
    while sim.stats()["counters"].get(name, 0) != value and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sim.stats()["counters"].get(name, 0) == value


def test_a_webhook_answer_without_polling_url_makes_the_client_rebuild_it_which_fails(
    sim: SimulatorServer, client: BFLClient, webhook_receiver: WebhookReceiver
) -> None:
    # Given webhook answers without polling_url (UNCONFIRMED shape) and the strict polling host
    sim.configure(webhook_response_polling_url=False)
    submitted = client.submit_json("flux-pro-1.1", _body(webhook_receiver))
    webhook_receiver.wait_for(1)
    # When fluxq polls the URL it had to build from its base URL
    result = client.get_result(submitted.polling_url)
    # Then the API host answers Task not found: only the webhook tells the outcome
    assert submitted.polling_url.startswith(sim.base_url)
    assert result.raw_status == "Task not found"
