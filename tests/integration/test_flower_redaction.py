"""No secret reaches Flower when a fluxq task fails with a foreign exception: read over HTTP.

A real worker process (``fluxq.worker_process``, what ``fluxq worker`` starts for each worker,
task events on) runs every fluxq task type on the test Redis; real ``fluxq flower`` on loopback
watches its events. Each task's work is replaced, in that worker process only, by a bug that
raises a ``RuntimeError`` whose message and args quote the BFL key, the BFL webhook secret, the
key's derived webhook secret, the user's webhook secret and the job's URL token: a small wrapper
script in the test's directory patches the task modules (as ``tests/unit/test_redacted_tasks.py``
does in-process) and then calls the worker's own ``main``. No test hook lives in fluxq.

Then Flower's ``/api/tasks``, ``/api/task/info/<id>`` and task pages, the worker's and Flower's
output, and every value in Redis (a result backend's meta included, were one configured) are
read as raw text: each task failed, and no secret is anywhere.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from fluxq.config.celery import ALL_QUEUES, celery_config
from fluxq.simulator.server import SimulatorServer
from fluxq.workers.bfl.webhooks import job_token, key_secret
from fluxq.workers.celery_app import make_celery
from fluxq.workers.process.embedded_redis import free_port
from fluxq.workers.state.keys import key_label
from tests.integration.test_flower import AUTH_ENV, PASSWORD, USER
from tests.support.cluster import cluster_env
from tests.support.env import KEY, settings_for
from tests.support.flower import Flower, flower_env, running_flower, stop_session
from tests.support.tasks import TASKS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOOK_SECRET = "flower-leak-bfl-hook-secret-9a7c5e3b1d"
OWN_SECRET = "flower-leak-own-hook-secret-2468ace0"
JOB = "leaky-job-1"
"""The job every task is about (the enqueue message's task id): its URL token is a secret."""

BATCH = "leaky"

SEEN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

WRAPPER = '''\
"""fluxq.worker_process, each task's work replaced by a bug quoting every secret (a test's)."""

import sys

import fluxq.tasks.enqueue
import fluxq.tasks.notify
import fluxq.tasks.poll
import fluxq.tasks.save
import fluxq.tasks.submit
from fluxq import worker_process

SECRETS = @SECRETS@
TARGETS = @TARGETS@


def bug(*args, **kwargs):
    key, hook, own, derived, token = SECRETS
    body = {"x-key": key, "webhook_secret": derived, "webhook_url": f"https://h.test/{token}"}
    raise RuntimeError(f"cannot handle body {body} signed with {hook} and {own}", *SECRETS)


for module, function in TARGETS:
    setattr(sys.modules[module], function, bug)

worker_process.main(sys.argv[1:])
'''


def secrets() -> list[str]:
    """Every secret the worker knows of (webhook mode), and the one job's URL token."""
    hook = SecretStr(HOOK_SECRET)
    derived = key_secret(hook, key_label(SecretStr(KEY)))
    return [KEY, HOOK_SECRET, OWN_SECRET, derived, job_token(hook, JOB)]


NAMES = ("BFL key", "BFL webhook secret", "own webhook secret", "key's webhook secret", "job token")
"""What each of ``secrets()`` is, in order: a failure names the leak without repeating it."""


def leaks(text: str) -> list[str]:
    """The names of the secrets found in ``text``."""
    return [name for name, secret in zip(NAMES, secrets(), strict=True) if secret in text]


@contextlib.contextmanager
def leaky_worker(env: dict[str, str], tmp_path: Path, log: Path) -> Iterator[Path]:
    """The wrapped worker process until the block ends; stopped by its pid (SIGTERM, then
    SIGKILL), and anything left in its session after it."""
    wrapper = tmp_path / "leaky_worker.py"
    targets = sorted(TASKS.values())
    source = WRAPPER.replace("@SECRETS@", json.dumps(secrets()))
    wrapper.write_text(source.replace("@TARGETS@", json.dumps(targets)))
    argv = [
        sys.executable, "-P", str(wrapper), "--name", "leaky", "--queues", ",".join(ALL_QUEUES),
        "--threads", "2", "--loglevel", "info",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield log
    finally:
        stop_session(process, STOP_TIMEOUT_S)


def send_every_task(env: dict[str, str]) -> dict[str, str]:
    """Send each fluxq task once, as fluxq and another service send them: task id by name."""
    app = make_celery(settings_for(env))
    sent: dict[str, str] = {}
    try:
        for name in sorted(TASKS):
            if name == "fluxq.enqueue":  # the job id is the message's task id
                message = {"endpoint": "flux-dev", "request": {"prompt": "a"}, "batch": BATCH}
                result = app.send_task(name, kwargs=message, task_id=JOB)
            else:
                result = app.send_task(name, args=[JOB], kwargs={"batch": BATCH})
            sent[name] = result.id
    finally:
        app.close()
    return sent


def failed_in_flower(client: httpx.Client, sent: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Flower's ``/api/tasks`` entries of the tasks sent that it shows as failed."""
    listed = client.get("/api/tasks")
    assert listed.status_code == 200, listed.text[:500]
    tasks: dict[str, dict[str, Any]] = listed.json()
    return {
        name: tasks[task_id]
        for name, task_id in sent.items()
        if tasks.get(task_id, {}).get("state") == "FAILURE"
    }


def redis_values(client: redis.Redis[bytes]) -> Iterator[tuple[str, bytes]]:
    """Every key of Redis with each value it holds, whatever its type."""
    for raw in client.scan_iter(count=500):
        key = raw.decode(errors="replace")
        kind = client.type(raw).decode()  # type: ignore[no-untyped-call]
        values: list[bytes] = []
        if kind == "string":
            values = [client.get(raw) or b""]
        elif kind == "hash":
            values = [b for pair in client.hgetall(raw).items() for b in pair]
        elif kind == "list":
            values = list(client.lrange(raw, 0, -1))
        elif kind == "set":
            values = list(client.smembers(raw))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(raw, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in client.xrange(raw):
                values += [b for pair in fields.items() for b in pair]
        yield key, raw
        for value in values:
            yield key, value


def test_flower_shows_each_task_failed_by_a_foreign_exception_without_a_secret(
    sim: SimulatorServer, redis_url: str, tmp_path: Path
) -> None:
    # Given a worker in webhook mode knowing every secret, each task's work a bug quoting them
    hooks = f"http://127.0.0.1:{free_port()}"
    settings = {
        "BFL_API_KEY": KEY, "FLUXQ_BFL_WEBHOOK_BASE_URL": hooks,
        "FLUXQ_BFL_WEBHOOK_SECRET": HOOK_SECRET, "FLUXQ_WEBHOOK_SECRET": OWN_SECRET,
    }  # fmt: skip
    env = cluster_env(sim, redis_url, tmp_path, settings)
    # And `fluxq flower` on loopback (basic auth: its API needs it) watching the same Redis,
    # up before any task runs
    flower: Flower
    with (
        running_flower(
            flower_env(redis_url, AUTH_ENV), tmp_path, tmp_path / "flower.log"
        ) as flower,
        leaky_worker(env, tmp_path, tmp_path / "worker.log") as worker_log,
        httpx.Client(base_url=flower.base_url, auth=(USER, PASSWORD), timeout=10.0) as client,
    ):
        assert flower.base_url.startswith("http://127.0.0.1:")
        # When each task type is sent once and the worker runs it
        sent = send_every_task(env)
        deadline = time.monotonic() + SEEN_TIMEOUT_S
        while len(failed := failed_in_flower(client, sent)) < len(sent):
            if time.monotonic() > deadline:
                listed = client.get("/api/tasks").text
                states = {
                    name: json.loads(listed).get(i, {}).get("state") for name, i in sent.items()
                }
                pytest.fail(
                    f"not all failed in Flower in {SEEN_TIMEOUT_S} s: {states}\n"
                    f"{worker_log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.3)
        # Then nothing Flower answers holds a secret: the list, each task's info and its page
        shown = {"/api/tasks": client.get("/api/tasks")}
        for task_id in sent.values():
            for path in (f"/api/task/info/{task_id}", f"/task/{task_id}"):
                shown[path] = client.get(path)
        for path, answer in shown.items():
            assert answer.status_code == 200, (path, answer.text[:300])
            assert leaks(answer.text) == [], (path, leaks(answer.text))
        # And it shows each task failed by fluxq's redacted error, which still names the bug
        for name, task_id in sent.items():
            info = shown[f"/api/task/info/{task_id}"].json()
            assert (info["name"], info["state"]) == (name, "FAILURE"), info
            assert info["exception"] == failed[name]["exception"], name
            assert str(info["exception"]).startswith("TaskCrashed("), name
            assert 'RuntimeError: ("cannot handle body {' in info["exception"], name
            assert "[redacted]" in info["exception"], name
            assert "workers.redacted_task.TaskCrashed: RuntimeError" in info["traceback"], name
    # And the worker logged each failure (all it wrote, to its stop), without a secret
    log = worker_log.read_text(errors="replace")
    for name, task_id in sent.items():
        assert f"Task {name}[{task_id}] raised unexpected: TaskCrashed(" in log, name
    assert leaks(log) == [], leaks(log)
    # And neither did Flower's output
    assert leaks(flower.log_text()) == [], leaks(flower.log_text())
    # And nothing kept in Redis holds one: the broker's, and a result backend's meta, were one
    # configured (fluxq sets none today: task_ignore_result, result_backend None)
    backend = celery_config(redis_url)["result_backend"]
    found: list[tuple[str, list[str]]] = []
    for url in {redis_url, *([backend] if str(backend).startswith("redis") else [])}:
        with contextlib.closing(redis.Redis.from_url(url)) as store:
            found += [
                (key, leaks(value.decode(errors="replace"))) for key, value in redis_values(store)
            ]
    assert [item for item in found if item[1]] == []
    assert found, "Redis held nothing: the scan read the wrong server"
