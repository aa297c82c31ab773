"""fluxq: FLUX image generation through the BFL API as a Celery task queue, at the key's cap.

The front door for users and services::

    import fluxq

    job = fluxq.enqueue("flux-pro-1.1", {"prompt": "a heron at dawn"}, batch="night-42")
    print(job.wait().path)

    count = fluxq.enqueue_many("flux-dev", ({"prompt": p} for p in prompts), batch="night-43")

``fluxq.Client(settings)`` for an explicit connection; the ``fluxq`` command for everything else.
The client and job names are imported on first use, so ``fluxq``'s command line starts without
loading Celery and the pipeline it does not need (``fluxq batch status`` answers in a fraction of
a second).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The error tree, every error fluxq raises to a caller (catchable as fluxq.FluxqError): a module
# of plain classes, imported at once.
from fluxq.config.errors import (
    ConfigError,
    DisallowedURL,
    DownloadFailed,
    FieldError,
    FluxqError,
    InvalidRequest,
    JobFailed,
    NotAuthorised,
    NotSent,
    OutcomeUnknown,
    OutOfCredits,
    RateLimited,
    ReadFailed,
    RetryLater,
    ServerError,
    StopAndAlert,
    UnexpectedResponse,
    WebhookRefused,
)

if TYPE_CHECKING:
    from fluxq.client import Client, JobHandle, enqueue, enqueue_many
    from fluxq.workers.state.jobs import State

__all__ = [
    "Client",
    "ConfigError",
    "DisallowedURL",
    "DownloadFailed",
    "FieldError",
    "FluxqError",
    "InvalidRequest",
    "JobFailed",
    "JobHandle",
    "NotAuthorised",
    "NotSent",
    "OutOfCredits",
    "OutcomeUnknown",
    "RateLimited",
    "ReadFailed",
    "RetryLater",
    "ServerError",
    "State",
    "StopAndAlert",
    "UnexpectedResponse",
    "WebhookRefused",
    "enqueue",
    "enqueue_many",
]

_HOMES = {
    "Client": "fluxq.client",
    "JobHandle": "fluxq.client",
    "enqueue": "fluxq.client",
    "enqueue_many": "fluxq.client",
    "State": "fluxq.workers.state.jobs",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its home module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fluxq' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
