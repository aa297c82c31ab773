"""``fluxq flower`` as a user runs it, watching a real cluster: set up to be read.

Flower starts as ``python -P -m fluxq flower`` in a session of its own, on a free loopback port,
against the test Redis, while real ``fluxq worker`` processes run jobs on the simulator; everything
is read over HTTP as a browser or a script would, and every process is stopped by its own pid.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluxq.tasks.enqueue import enqueue
from fluxq.workers.process.embedded_redis import free_port
from tests.support.cluster import Cluster
from tests.support.flower import (
    cmdline,
    flower_argv,
    flower_env,
    in_group,
    running_flower,
)
from tests.support.net import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

USER = "night-ops"
PASSWORD = "heron-watch-" + secrets.token_urlsafe(16)
"""This run's Flower password: it must show up in no argv and no log."""

AUTH_ENV = {"FLUXQ_FLOWER_USER": USER, "FLUXQ_FLOWER_PASSWORD": PASSWORD}


def api_tasks(client: httpx.Client, **params: str) -> dict[str, dict[str, Any]]:
    response = client.get("/api/tasks", params=params, auth=(USER, PASSWORD))
    assert response.status_code == 200, response.text
    tasks: dict[str, dict[str, Any]] = response.json()
    return tasks


def job_of(task: Mapping[str, Any]) -> str:
    """The job id in a task's args text, ``job=<id> endpoint=… "…"``."""
    first = str(task.get("args") or "").split(" ", 1)[0]
    assert first.startswith("job="), task
    return first.removeprefix("job=")


def test_flower_lists_fluxq_tasks_with_their_args_and_kwargs_and_finds_a_batch(
    make_cluster: Callable[..., Cluster], redis_url: str, tmp_path: Path
) -> None:
    # Given `fluxq flower` with basic auth from the environment, watching a cluster's Redis
    cluster = make_cluster()
    cwd = tmp_path / "flower-cwd"
    cwd.mkdir()
    env = flower_env(redis_url, AUTH_ENV)
    with running_flower(env, cwd, tmp_path / "flower.log") as flower:
        cluster.start_worker(threads=4, save_threads=0)
        # When a batch "herons" of three jobs and a batch "egrets" of one run to the end
        herons = {
            enqueue(
                cluster.rt, "flux-dev",
                {"prompt": f"a grey heron fishing at dawn, study {i}", "seed": i}, batch="herons",
            )
            for i in range(3)
        }  # fmt: skip
        egret = enqueue(
            cluster.rt, "flux-dev", {"prompt": "a white egret in reeds", "seed": 9}, batch="egrets"
        )
        assert cluster.wait_terminal("herons", 3, timeout_s=60).get("done") == 3
        assert cluster.wait_terminal("egrets", 1, timeout_s=60).get("done") == 1

        client = httpx.Client(base_url=flower.base_url, timeout=10.0)
        try:
            # Then without credentials, or with a wrong password, pages and API are 401
            for path in ("/", "/tasks", "/api/tasks", "/tasks/datatable"):
                assert client.get(path).status_code == 401, path
                assert client.get(path, auth=(USER, "not-the-password")).status_code == 401, path

            # And with them the task list has args and kwargs columns
            page = client.get("/tasks", auth=(USER, PASSWORD))
            assert page.status_code == 200, page.text[:500]
            assert 'data-column="args"' in page.text
            assert 'data-column="kwargs"' in page.text

            # And Flower's search for the batch finds every heron job's tasks, and only those
            def herons_saved() -> bool:  # every event in: the saves' are the last
                found = api_tasks(client, search="batch=herons").values()
                saves = [t for t in found if t["name"] == "fluxq.save" and t["state"] == "SUCCESS"]
                return {job_of(task) for task in saves} >= herons

            assert wait_until(herons_saved, timeout_s=30), api_tasks(client)
            found = api_tasks(client, search="batch=herons")
            assert {job_of(task) for task in found.values()} == herons
            for task in found.values():
                assert task["kwargs"] == "batch=herons", task
                assert " endpoint=flux-dev " in task["args"], task
                assert '"a grey heron fishing' in task["args"], task
                assert task["name"].startswith("fluxq."), task
            assert {task["name"] for task in found.values()} >= {"fluxq.submit", "fluxq.save"}
            # And each job's polling is one task, however many polls it took, ended with them
            polls = [task for task in found.values() if task["name"] == "fluxq.poll"]
            assert sorted(job_of(task) for task in polls) == sorted(herons), polls
            for task in polls:
                assert task["state"] == "SUCCESS", task
                assert str(task["result"]).endswith(" polls"), task

            # And unfiltered, the egret is listed too: the search did the filtering
            def egret_seen() -> bool:
                listed = api_tasks(client).values()
                return egret in {job_of(t) for t in listed if str(t.get("args")).startswith("job=")}

            assert wait_until(egret_seen, timeout_s=30), api_tasks(client)

            # And the page's own table (DataTables, server side) filters the same way
            params = {"draw": "1", "start": "0", "length": "100", "search[value]": "batch=herons"}
            params |= {"order[0][column]": "0", "order[0][dir]": "desc"}
            params |= {"columns[0][data]": "received"}
            table = client.get("/tasks/datatable", params=params, auth=(USER, PASSWORD)).json()
            assert table.get("searchError") is None, table
            assert table["recordsFiltered"] == len(found) == len(table["data"])
            assert table["recordsTotal"] > table["recordsFiltered"]
            assert {row["kwargs"] for row in table["data"]} == {"batch=herons"}

            # And Flower only watches: revoking a task from it is refused
            some_task = next(iter(found))
            revoke = client.post(f"/api/task/revoke/{some_task}", auth=(USER, PASSWORD))
            assert revoke.status_code == 403, revoke.text
            assert "read only" in revoke.text.lower()
        finally:
            client.close()

        # And the password is in no process's argv (what `ps` shows) nor in Flower's output
        group = in_group(flower.process.pid)
        assert flower.process.pid in group
        for pid in group:
            assert PASSWORD not in cmdline(pid), pid
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        log = flower.log_text()
        assert PASSWORD not in log
        assert token not in log
        assert "basic auth required" in log

    # And it stops on SIGTERM with exit 0, having written no state file (not --persistent)
    assert flower.exit_code == 0, flower.log_text()[-3000:]
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("address", "extra", "says"),
    [
        ("0.0.0.0", {}, "fluxq: flower: refusing to serve 0.0.0.0 without basic auth"),
        ("::", {}, "fluxq: flower: refusing to serve :: without basic auth"),
        (
            "0.0.0.0",
            {"FLUXQ_FLOWER_USER": USER},
            "fluxq: flower: set both FLUXQ_FLOWER_USER and FLUXQ_FLOWER_PASSWORD",
        ),
        ("127.0.0.1", {"FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}, "fluxq: flower: FLOWER_BASIC"),
    ],
    ids=["any-ipv4", "any-ipv6", "user-without-password", "flower-own-variable"],
)
def test_flower_refuses_before_binding_an_address_beyond_loopback_without_basic_auth(
    redis_url: str, tmp_path: Path, address: str, extra: dict[str, str], says: str
) -> None:
    # Given no (or half a) basic auth, and a safety net: were the refusal missing, Flower would
    # listen on this Unix socket (FLOWER_UNIX_SOCKET), never on a TCP address beyond loopback
    guard = tmp_path / "guard.sock"
    env = flower_env(redis_url, extra) | {"FLOWER_UNIX_SOCKET": str(guard)}
    argv = flower_argv(free_port(), "--address", address)
    # When `fluxq flower --address …` starts
    try:
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:  # run() has killed it
        pytest.fail(f"fluxq flower --address {address} started instead of refusing")
    # Then it exits 2 with one line naming the fix, before binding or starting anything
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2, done.stderr.decode()
    assert len(lines) == 1, lines
    assert lines[0].startswith(says), lines
    assert done.stdout == b""
    assert not guard.exists()
    assert PASSWORD not in lines[0]


def test_flower_persistent_keeps_its_task_list_across_a_restart(
    make_cluster: Callable[..., Cluster], redis_url: str, tmp_path: Path
) -> None:
    # Given `fluxq flower --persistent --db PATH` watching a worker that runs one job
    cluster = make_cluster()
    state = tmp_path / "state" / "flower"
    state.parent.mkdir()
    env = flower_env(redis_url, AUTH_ENV)
    args = ("--persistent", "--db", str(state))
    with running_flower(env, tmp_path, tmp_path / "flower-1.log", *args) as flower:
        cluster.start_worker(threads=4, save_threads=0)
        request = {"prompt": "a kept kingfisher", "seed": 1}
        job = enqueue(cluster.rt, "flux-dev", request, batch="kept")
        assert cluster.wait_terminal("kept", 1, timeout_s=60).get("done") == 1
        with httpx.Client(base_url=flower.base_url, timeout=10.0) as client:

            def all_succeeded() -> bool:  # so the state saved at exit is the state seen here
                tasks = api_tasks(client, search="batch=kept").values()
                names = {t["name"] for t in tasks}
                return "fluxq.save" in names and all(t["state"] == "SUCCESS" for t in tasks)

            assert wait_until(all_succeeded, timeout_s=30), api_tasks(client)
            before = api_tasks(client, search="batch=kept")
    # When it stops (SIGTERM), the workers stop, and it starts again on the same state file
    assert flower.exit_code == 0, flower.log_text()[-3000:]
    assert list(state.parent.iterdir()), "no state written"
    cluster.stop()
    with (
        running_flower(env, tmp_path, tmp_path / "flower-2.log", *args) as again,
        httpx.Client(base_url=again.base_url, timeout=10.0) as client,
    ):
        after = api_tasks(client, search="batch=kept")
    # Then the job's tasks are listed again, with their text and states, though no event came
    assert set(after) == set(before)
    assert {job_of(task) for task in after.values()} == {job}
    for task_id, task in after.items():
        assert (task["state"], task["args"], task["kwargs"]) == (
            before[task_id]["state"], before[task_id]["args"], "batch=kept"
        )  # fmt: skip
    assert again.exit_code == 0, again.log_text()[-3000:]


def test_flower_answers_only_its_own_host_names(redis_url: str, tmp_path: Path) -> None:
    # Given `fluxq flower` without basic auth (loopback only), one extra name allowed
    env = flower_env(redis_url, {"FLUXQ_FLOWER_ALLOWED_HOSTS": "flower.example"})
    with (
        running_flower(env, tmp_path, tmp_path / "flower.log") as flower,
        httpx.Client(base_url=flower.base_url, timeout=10.0) as client,
    ):
        # When a page whose name was rebound to 127.0.0.1 reads it (DNS rebinding)
        for path in ("/", "/tasks", "/api/tasks", "/healthcheck"):
            refused = client.get(path, headers={"Host": f"rebind.evil.example:{flower.port}"})
            # Then Flower answers 400, naming the setting, and nothing of its own
            assert refused.status_code == 400, (path, refused.text[:300])
            assert "FLUXQ_FLOWER_ALLOWED_HOSTS" in refused.text
        # And its own names are answered
        for host in (f"127.0.0.1:{flower.port}", f"localhost:{flower.port}", "flower.example"):
            for path in ("/tasks", "/healthcheck"):
                answer = client.get(path, headers={"Host": host})
                assert answer.status_code == 200, (host, path, answer.text[:300])
        assert "Host: " in flower.log_text()
