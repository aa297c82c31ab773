"""A failed task shows no secret: every fluxq Celery task, failed with a foreign exception that
quotes the key, the webhook secrets and a job's URL token, as a worker runs it (Celery's tracer).

What Celery logs, what its task-failed event carries to Flower (the exception's repr and the
traceback) and the result's meta are all built from the exception the task raised."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from fluxq.config.errors import JobFailed
from fluxq.config.settings import Settings, load_settings
from fluxq.workers.bfl.webhooks import job_token, key_secret
from fluxq.workers.dispatch import celery_runtime
from fluxq.workers.redacted_task import TaskCrashed
from fluxq.workers.runtime import Runtime
from fluxq.workers.state.keys import key_label
from tests.support.env import KEY
from tests.support.tasks import TASKS

HOOK_SECRET = "bfl-webhook-secret-0123456789abcdef"
OWN_SECRET = "own-webhook-secret-fedcba9876543210"
JOB = "job-1"


@pytest.fixture
def rt(redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    settings: Settings = load_settings(
        _env_file=None, bfl_api_key=KEY, redis_url=redis_url, output_dir=tmp_path / "out",
        bfl_webhook_base_url="https://hooks.example.test", bfl_webhook_secret=HOOK_SECRET,
        webhook_secret=OWN_SECRET,
    )  # fmt: skip
    runtime = celery_runtime(settings)
    yield runtime
    runtime.close()


def secrets() -> list[str]:
    """Every secret a worker in webhook mode knows of, and the one job's URL token."""
    hook = SecretStr(HOOK_SECRET)
    derived = key_secret(hook, key_label(SecretStr(KEY)))
    return [KEY, HOOK_SECRET, OWN_SECRET, derived, job_token(hook, JOB)]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_task_failed_by_a_foreign_exception_shows_no_secret(
    rt: Runtime, name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the task's work raises a bug's exception that quotes every secret it could see
    module, function = TASKS[name]
    quoted = " ".join(secrets())

    def bug(*args: object, **kwargs: object) -> None:
        raise TypeError(f"cannot handle body {{'x-key': ..., 'all': '{quoted}'}}")

    monkeypatch.setattr(f"{module}.{function}", bug)
    task = rt.dispatch.app.tasks[name]  # type: ignore[attr-defined]
    # When a worker runs it
    with caplog.at_level(logging.INFO):
        if name == "fluxq.enqueue":
            message = {"endpoint": "flux-dev", "request": {"prompt": "a"}}
            result = task.apply(kwargs=message, task_id=JOB)
        else:
            result = task.apply(args=(JOB,), kwargs={"batch": "b"})
    # Then it failed, and nothing Celery logs, sends to Flower or keeps holds a secret
    assert result.state == "FAILURE"
    shown = [str(result.result), repr(result.result), result.traceback or "", caplog.text]
    for text in shown:
        for secret in secrets():
            assert secret not in text, (name, text[:300])
    assert isinstance(result.result, TaskCrashed)
    assert "TypeError: cannot handle body" in str(result.result)  # still says what broke
    assert "[redacted]" in str(result.result)


def test_a_clean_fluxq_error_passes_unchanged(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: object, **kwargs: object) -> None:
        raise JobFailed("the job cannot succeed: nothing secret here")

    monkeypatch.setattr("fluxq.tasks.poll.poll_job", fails)
    result = rt.dispatch.app.tasks["fluxq.poll"].apply(args=(JOB,))  # type: ignore[attr-defined]
    assert isinstance(result.result, JobFailed)
    assert str(result.result) == "the job cannot succeed: nothing secret here"
