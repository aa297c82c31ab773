"""The Celery app: each task lands in its own queue exactly once, with Flower-readable args."""

from __future__ import annotations

import importlib
import json

import pytest
import redis

from fluxq.config.celery import ALL_QUEUES, TASK_MODULES, TASKS, TaskSpec
from fluxq.config.settings import Settings
from fluxq.workers.celery_app import make_celery
from fluxq.workers.dispatch import CeleryDispatcher
from fluxq.workers.state.jobs import Job, State
from fluxq.workers.state.poll_queue import PollQueue
from fluxq.workers.state.save_queue import SaveQueue


def declare_all_queues(app_url: str) -> None:
    app = make_celery(Settings(redis_url=app_url))
    with app.connection_for_write() as conn:
        for queue in app.amqp.queues.values():
            queue.bind(conn).declare()


def job(prompt: str) -> Job:
    return Job(
        job_id="job-1", endpoint="flux-dev", request={"prompt": prompt}, batch="night-7",
        name="job-1", priority=5, group="default", key_label="abc", state=State.ADMITTED,
        reason=None, bfl_id=None, polling_url=None, cost=None, output_mp=None, seed=None,
        sample_url=None, progress=None, path=None, sha256=None, submitting_at=None,
        submit_attempts=0, poll_attempts=0, last_pending_s=None, not_found_count=0,
        download_attempts=0, refetched=0, sample_url_at=None,
        manifest_appended=False, uncertain=False, callback_json=None,
        webhook_url=None, webhook_delivered=False, webhook_failed=None, created_at=0.0, times={},
    )  # fmt: skip


def test_each_task_lands_in_its_own_queue_exactly_once_with_every_queue_declared(
    redis_url: str, redis_client: redis.Redis[str]
) -> None:
    # Given a broker where every fluxq queue has been declared (as running workers do)
    declare_all_queues(redis_url)
    polls = PollQueue(redis_client, "k")
    saves = SaveQueue(redis_client, "k")
    dispatcher = CeleryDispatcher(make_celery(Settings(redis_url=redis_url)), polls, saves)
    # When one task of each kind is sent, and a save that must wait 5 s
    dispatcher.submit(job("p"))
    dispatcher.poll(job("p"), countdown_s=0)
    dispatcher.save(job("p"))
    dispatcher.save(job("p"), countdown_s=5.0)
    dispatcher.notify(job("p"))
    # Then each queue holds exactly its own message; the poll is no message (the job waits in
    # the key's poll queue), nor is the save due now (it waits in the key's save queue); the
    # save that must wait is a Celery message with its countdown (an ETA: held unacked)
    lengths = {name: redis_client.llen(name) for name in ALL_QUEUES}
    assert lengths == {"fluxq.submit": 1, "fluxq.poll": 0, "fluxq.save": 1, "fluxq.control": 1}
    assert polls.due_s("job-1") is not None
    assert redis_client.lrange(saves.key, 0, -1) == ["job-1"]
    message = json.loads(redis_client.lindex("fluxq.save", 0) or "{}")
    assert message["headers"]["eta"] is not None


def test_messages_carry_only_the_job_id_and_batch_and_a_readable_flower_text(
    redis_url: str, redis_client: redis.Redis[str]
) -> None:
    dispatcher = CeleryDispatcher(make_celery(Settings(redis_url=redis_url)))
    long_prompt = "a very long prompt about a lighthouse on a cliff at dusk in oil paint"
    dispatcher.submit(job(long_prompt))
    message = json.loads(redis_client.lpop("fluxq.submit") or "{}")
    headers = message["headers"]
    assert headers["task"] == "fluxq.submit"
    assert headers["argsrepr"] == 'job=job-1 endpoint=flux-dev "a very long prompt about a…"'
    assert headers["kwargsrepr"] == "batch=night-7"
    body = json.loads(__import__("base64").b64decode(message["body"]))
    assert body[0] == ["job-1"]
    assert body[1] == {"batch": "night-7"}


@pytest.mark.parametrize("spec", TASKS, ids=lambda spec: spec.name)
def test_each_task_spec_names_a_task_its_module_registers_and_routes_it_to_its_queue(
    spec: TaskSpec,
) -> None:
    # Given an app built as workers and producers build it, and the spec's module imported
    app = make_celery(Settings(redis_url="redis://localhost:1/0"))
    importlib.import_module(spec.module)
    # Then the app knows a task of that name, defined in that module, routed to that queue
    task = app.tasks[spec.name]
    assert task.run.__module__ == spec.module
    assert app.amqp.router.route({}, spec.name)["queue"].name == spec.queue
    assert spec.module in TASK_MODULES
    assert spec.module in app.conf.include


def test_task_names_and_queues_are_the_wire_contract() -> None:
    # Messages in flight and other services' send_task calls use these: they never change
    assert {spec.name: spec.queue for spec in TASKS} == {
        "fluxq.submit": "fluxq.submit",
        "fluxq.poll": "fluxq.poll",
        "fluxq.save": "fluxq.save",
        "fluxq.webhook": "fluxq.control",
        "fluxq.enqueue": "fluxq.control",
    }
