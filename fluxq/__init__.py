"""fluxq: FLUX image generation through the BFL API as a Celery task queue, at the key's cap.

The front door for users and services::

    import fluxq

    job = fluxq.enqueue("flux-pro-1.1", {"prompt": "a heron at dawn"}, batch="night-42")
    print(job.wait().path)

``fluxq.Client(settings)`` for an explicit connection; the ``fluxq`` command for everything else.
"""

from __future__ import annotations

from config.errors import FluxqError, InvalidRequest
from fluxq.client import Client, JobHandle, enqueue
from workers.state.jobs import State

__all__ = ["Client", "FluxqError", "InvalidRequest", "JobHandle", "State", "enqueue"]
