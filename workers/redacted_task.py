"""The base of every fluxq Celery task: what a failed task shows is redacted of every secret.

Celery logs a failed task's exception (its message, repr and traceback), sends it in the
task-failed event that Flower shows, and keeps it as the result's meta where a backend is set.
A foreign exception (a bug, a library's error) may quote anything it was given: a request body
with the key's webhook secret, a job's webhook URL token, a header. So a task that fails with
anything but a fluxq error whose text is clean raises ``TaskCrashed`` instead: the same type name
and message, redacted, not chained (no traceback repeats the original).
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from pydantic import SecretStr

from fluxq.config.errors import ConfigError, FluxqError
from fluxq.config.redact import mentions_secret, redact
from fluxq.workers.bfl.webhooks import job_token
from fluxq.workers.dispatch import runtime_of

CONTROL_FLOW = (Retry, Ignore, Reject)
"""Celery's own exceptions that steer a task (a retry, a drop): passed on untouched."""


class TaskCrashed(RuntimeError):
    """Raised in place of an exception that is not fluxq's own or that quoted a secret; its text
    is the original's type and message, redacted."""


class RedactedTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """A Celery task whose failures carry only redacted text (see the module's docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except CONTROL_FLOW:
            raise
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            secrets = self._secrets(args, kwargs)
            if isinstance(exc, FluxqError) and not mentions_secret(text, secrets):
                raise
            raise TaskCrashed(redact(text, secrets)) from None

    def _secrets(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[SecretStr | str | None, ...]:
        """The settings' secrets, the BFL client's derived ones, and the URL token of the job
        the task is about (its first argument, else ``job_id``, else the message's id: the
        enqueue task's job), when this worker runs webhook mode."""
        try:
            rt = runtime_of(self.app)
        except ConfigError:
            return ()
        # The client's: every secret of the settings, and the webhook secret derived from them.
        found: list[SecretStr | str | None] = list(rt.bfl.secrets)
        secret = rt.settings.bfl_webhook_secret
        job_id = args[0] if args else kwargs.get("job_id", self.request.id)
        if secret is not None and isinstance(job_id, str):
            found.append(job_token(secret, job_id))
        return tuple(found)
